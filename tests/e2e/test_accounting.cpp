// Bookkeeping a long-running peer-server must get right: connections it has
// closed no longer count against --max-connections, and what it uploaded is
// counted and survives a restart.
#include <catch2/catch.hpp>

#include "e2e.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/tls.hpp"
#include "peer.pb.h"
#include "support/hostile.hpp"
#include "support/tls_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

TEST_CASE("closed peer connections free their place under --max-connections", "[e2e]") {
  Cluster c(0);
  const fs::path data = c.path("small");
  Process peer({binary(), "peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0",
                "--data-dir", data.string(), "--max-connections", "3"},
               c.logs());
  const std::string addr = peer.wait_listening();
  // Many short peer-plane connections, one after another, each turned away
  // (unknown file) and closed by the server.
  pb::PeerMessage interested;
  interested.mutable_interested()->set_file_id(std::string(32, '\x01'));
  const auto key = tls::make_identity();
  const std::string opening =
      frame(protocol::hello(pb::PLANE_PEER, to_bytes(key.peer_id()))) + frame(interested.SerializeAsString());
  for (int i = 0; i < 8; ++i) {
    const sockaddr_in sa = loopback_address(addr);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) == 0);
    TlsClient tls(fd, &key);
    tls.send(opening);
    char buffer[4096];
    CHECK(wait_for([&] { return ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT) == 0; }, 5s));
    ::close(fd);
  }
  // The owner still gets in.
  const auto r = c.run({"status", "--peer-addr", addr, "--data-dir", data.string(), "--json"});
  CHECK(r.exit_code == 0);
}

TEST_CASE("a seed counts what it uploaded, and keeps the count across a restart", "[e2e]") {
  Cluster c(2);
  const auto file = c.make_file("f.bin", 8 * kChunkSize, 31);
  const std::string id = c.register_file(0, file);
  const auto out = c.path("got.bin");
  REQUIRE(c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()}).exit_code == 0);
  auto uploaded = [&] {
    const auto r = c.on_peer(0, "status", {"--json"});
    if (r.exit_code != 0) return std::int64_t{-1};
    const auto shared = parse_json(r)["shared"];
    return shared.empty() ? std::int64_t{-1} : shared[0]["uploaded"].get<std::int64_t>();
  };
  CHECK(uploaded() == static_cast<std::int64_t>(8 * kChunkSize));
  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  c.start_peer(0);
  CHECK(uploaded() == static_cast<std::int64_t>(8 * kChunkSize));
}
