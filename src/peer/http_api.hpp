// A peer-server's HTTP side (--http-addr): the dashboard at /, /metrics, the
// JSON API under /api/ and the gateway at /files/ID. Every request carries
// the control cookie (Authorization: Bearer HEX, or ?token=HEX); without it, 401.
//
// The API does what the control commands do, through the very same handlers
// (PeerServer's handle_control): it hands them a ControlSink that turns their
// answers into one HTTP answer.
//
// Threading: network thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "control.pb.h"
#include "p2pshare/http.hpp"
#include "p2pshare/types.hpp"
#include "peer/services.hpp"

namespace p2pshare::wire {
class Connection;
}

namespace p2pshare::peer {

class Swarm;

// Where a control handler's answers go: a control connection or an HTTP
// exchange. `send` takes one serialized pb::ControlResponse.
class ControlSink {
 public:
  virtual ~ControlSink() = default;
  virtual void send(std::string bytes) = 0;
  virtual bool closed() const = 0;
  virtual std::size_t queued_bytes() const = 0;
  // The control connection behind the sink (request-file --stdout streams
  // on it); null for the HTTP API, which streams through GET /files/ID.
  virtual std::shared_ptr<wire::Connection> connection() const { return nullptr; }
};

// What the HTTP side needs of the peer-server.
struct PeerHttpHost {
  Services* services = nullptr;
  std::string cookie;  // the 64 hex digits of control.cookie
  std::function<void(const std::shared_ptr<ControlSink>&, const pb::ControlRequest&)> control;
  std::function<std::shared_ptr<Swarm>(const FileId&)> lookup;
  std::function<std::vector<std::shared_ptr<Swarm>>()> swarms;
  std::function<std::string()> listen_address;
  std::function<std::uint64_t()> cache_used;  // bytes of volunteered copies (--cache-dir)
  std::uint64_t cache_limit = 0;              // --cache-limit (0: not a volunteer)
  std::function<std::size_t()> http_connections;
};

http::Handler make_peer_http_handler(std::shared_ptr<PeerHttpHost> host);

}  // namespace p2pshare::peer
