// Only a peer's owner (who can read its data dir's cookie) drives it.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a control command proven with another peer's cookie is refused and changes nothing", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("secret.bin", kChunkSize + 10, 11);
  const auto& other_dir = c.peer(1).data_dir;

  // register-file on peer 0 with peer 1's cookie.
  check_fails("register-file", c.on_peer_as(0, other_dir, "register-file", {"--path", src.string()}), 1,
              {"not authorized"});

  // A file peer 1 legitimately shares: peer 0 must not be made to download it.
  const std::string id = c.register_file(1, src);
  REQUIRE(c.wait_holders(id, 1));
  const auto out = c.path("out") / "stolen.bin";
  check_fails("request-file", c.on_peer_as(0, other_dir, "request-file", {"--file-id", id, "--out", out.string()}), 1,
              {"not authorized"});
  check_fails("stop-sharing", c.on_peer_as(1, c.peer(0).data_dir, "stop-sharing", {"--file-id", id}), 1,
              {"not authorized"});
  check_fails("status", c.on_peer_as(0, other_dir, "status"), 1, {"not authorized"});

  // The real owner of peer 0 sees nothing shared, nothing downloading.
  const auto r = c.on_peer(0, "status", {"--json"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto status = parse_json(r);
  CHECK(status["shared"].empty());
  CHECK(status["downloads"].empty());
  CHECK_FALSE(fs::exists(out));
  // Peer 1 still shares its file, and nobody else holds it.
  CHECK(c.holders(id) == 1);
  const auto addrs = c.live_addrs(id);
  REQUIRE(addrs);
  CHECK(*addrs == std::vector<std::string>{c.peer(1).addr});
}
