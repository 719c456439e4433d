// The peer-server's one connection to the central server, over TLS with the
// peer's certificate: the central server takes the peer id from the key the
// handshake proved, so the registration is bound to this connection and to a
// proof, not a claimed id. The central server's own key is checked against
// the pinned fingerprint or DATA_DIR/known_centrals first. It heartbeats, and on every (re)connect calls
// on_registered so the server re-announces everything it holds: a restarted
// central server is refilled without anyone's help.
//
// Failover: given several central servers (--central-server-addr A,B,...),
// it uses one at a time, and moves to the next in the list (round robin) when
// the one in use stops answering: the connection cannot be made or is lost,
// the handshake or registration fails, a heartbeat gets no answer in time or
// is answered "unavailable". A full round of the list without a registration
// waits a backoff (250 ms doubling to 5 s) before the next. Each central
// server's key is checked against the pinned fingerprint or its own line in
// known_centrals.
//
// Threading: network thread only.
#pragma once

#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "central.pb.h"
#include "p2pshare/cli.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/types.hpp"
#include "p2pshare/wire.hpp"

namespace p2pshare::peer {

class CentralLink : public std::enable_shared_from_this<CentralLink> {
 public:
  // response is nullopt on failure, with `error` saying why in one line.
  using Callback = std::function<void(std::optional<pb::CentralResponse> response, const std::string& error)>;

  struct Trust {
    std::shared_ptr<asio::ssl::context> context;  // presents our certificate
    PeerId self;                                  // the id our key proves
    std::optional<tls::KeyHash> pinned;           // --central-fingerprint
    std::filesystem::path data_dir;               // known_centrals
  };
  // `centrals`: one or more addresses, tried in this order.
  CentralLink(asio::io_context& io, std::vector<cli::Address> centrals, Trust trust, std::uint16_t listen_port,
              std::function<void()> on_registered);
  void start();
  void stop();
  // Sends now if registered; else waits up to `wait` for the registration.
  void request(pb::CentralRequest request, Callback callback, std::chrono::milliseconds wait = std::chrono::seconds(5));
  bool registered() const { return registered_; }
  const PeerId& peer_id() const { return peer_id_; }
  // The central server in use (or being tried).
  const cli::Address& address() const { return centrals_[current_]; }
  const std::vector<cli::Address>& addresses() const { return centrals_; }
  // Whether `key` is one a central server of the list is trusted with: the
  // pinned one, the one proved on the latest connection, or one recorded in
  // known_centrals for any address of the list.
  bool trusts(const tls::KeyHash& key);
  // The key the central server proved on the latest connection we accepted;
  // nullopt before the first one.
  const std::optional<tls::KeyHash>& central_key() const { return central_key_; }
  // The central server's key hash we trust (pinned, recorded in
  // known_centrals, or accepted at the last handshake): capabilities are
  // checked against it, also while the central server is unreachable.
  std::optional<tls::KeyHash> trusted_key();

 private:
  void connect();
  void on_connected(asio::ip::tcp::socket socket);
  void on_frame(std::string_view message);
  void on_closed(const std::string& reason);
  void send(pb::CentralRequest request, Callback callback,
            std::chrono::milliseconds deadline = std::chrono::seconds(30));
  void heartbeat();
  void retry_later();
  // The central server in use failed (why: one line): the next one, after a
  // backoff when the whole list failed since the last registration.
  void fail_over(const std::string& why);

  asio::io_context& io_;
  std::vector<cli::Address> centrals_;
  std::size_t current_ = 0;
  // Attempts failed since the last registration; a full round backs off.
  std::size_t failed_attempts_ = 0;
  // Set when the connection is closed to register again with the same central
  // server (it forgot us), not to move to the next.
  bool reconnect_same_ = false;
  bool outage_logged_ = false;
  Trust trust_;
  std::uint16_t listen_port_;
  std::function<void()> on_registered_;
  PeerId peer_id_;
  std::shared_ptr<wire::Connection> connection_;
  asio::steady_timer timer_;  // reconnect backoff or heartbeat
  std::chrono::milliseconds heartbeat_interval_{10000};
  std::chrono::milliseconds backoff_{250};
  bool registered_ = false;
  bool stopped_ = false;
  std::uint64_t next_id_ = 1;
  struct Pending {
    Callback callback;
    std::chrono::steady_clock::time_point deadline;
  };
  std::map<std::uint64_t, Pending> pending_;
  void expire_pending();
  struct Waiting {
    pb::CentralRequest request;
    Callback callback;
    std::chrono::steady_clock::time_point deadline;
  };
  std::deque<Waiting> waiting_;
  asio::steady_timer waiting_timer_;
  std::string last_error_ = "not connected yet";
  std::optional<tls::KeyHash> central_key_;
  std::optional<tls::KeyHash> trusted_key_;
};

}  // namespace p2pshare::peer
