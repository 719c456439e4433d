// Only a peer's owner (who can read its data dir's cookie) drives it.
#include <catch2/catch.hpp>

#include <fstream>

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

TEST_CASE("the control cookie is 64 hex digits a user can read, and an older raw one is kept as text", "[e2e]") {
  Cluster c(1);
  const auto cookie = c.peer(0).data_dir / "control.cookie";
  const std::string text = read_file(cookie);
  REQUIRE(text.size() == 65);
  CHECK(text.back() == '\n');
  CHECK(text.find_first_not_of("0123456789abcdef") == 64);
  CHECK((fs::status(cookie).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));

  // A cookie as the first wave wrote it: the same 32 bytes, raw.
  Cluster::stop(c.peer(0));
  std::string raw;
  for (std::size_t i = 0; i < 64; i += 2) raw.push_back(static_cast<char>(std::stoi(text.substr(i, 2), nullptr, 16)));
  {
    std::ofstream out(cookie, std::ios::binary | std::ios::trunc);
    out << raw;
  }
  // Rewritten as text at start, with the same value: commands still prove it.
  c.start_peer(0);
  CHECK(read_file(cookie) == text);
  const auto r = c.on_peer(0, "status");
  INFO(describe(r));
  CHECK(r.exit_code == 0);
}
