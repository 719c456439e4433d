// Failures: the exit status says whose fault it is (2: the command line, 1:
// the operation), one line on stderr names the problem, stdout stays empty.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

const std::string kUnknownId(64, 'a');  // well formed, never registered

}  // namespace

TEST_CASE("command-line mistakes exit 2 with one line naming the problem", "[e2e]") {
  TempDir dir;
  check_fails("unknown command", p2p({"frobnicate"}, dir), 2, {"frobnicate"});
  check_fails("unknown flag", p2p({"list-files", "--bogus-flag"}, dir), 2, {"bogus-flag"});
  check_fails("unknown flag on a server", p2p({"central-server", "--addr", "127.0.0.1:0", "--bogus-flag"}, dir), 2,
              {"bogus-flag"});
  check_fails("stray argument", p2p({"list-files", "stray"}, dir), 2, {"stray"});
  check_fails("missing value", p2p({"register-file", "--path"}, dir), 2, {"path"});
  check_fails("missing value", p2p({"list-files", "--central-server-addr"}, dir), 2, {"central-server-addr"});
  check_fails("missing required flag", p2p({"file-info"}, dir), 2, {"file-id"});
  check_fails("missing required flag", p2p({"request-file"}, dir), 2, {"file-id"});
  check_fails("missing required flag", p2p({"register-file"}, dir), 2, {"path"});
  check_fails("missing required flag", p2p({"central-server"}, dir), 2, {"addr"});
  check_fails("missing required flag", p2p({"peer-server", "--addr", "127.0.0.1:0"}, dir), 2, {"central-server-addr"});
}

TEST_CASE("malformed addresses exit 2 for clients and servers", "[e2e]") {
  TempDir dir;
  for (const std::string& bad :
       std::vector<std::string>{"nohost", "1.2.3.4:99999", "[::1", ":7070", "host:", "host:12x"}) {
    check_fails("list-files " + bad, p2p({"list-files", "--central-server-addr", bad}, dir), 2, {bad, "address"});
    check_fails("status " + bad, p2p({"status", "--peer-addr", bad, "--data-dir", dir.path().string()}, dir), 2, {bad});
    check_fails("central-server " + bad,
                p2p({"central-server", "--addr", bad, "--data-dir", (dir / "c").string()}, dir), 2, {bad});
    check_fails(
        "peer-server " + bad,
        p2p({"peer-server", "--central-server-addr", bad, "--addr", "127.0.0.1:0", "--data-dir", (dir / "p").string()},
            dir),
        2, {bad});
  }
}

TEST_CASE("malformed file ids exit 2", "[e2e]") {
  TempDir dir;
  for (const std::string& bad :
       std::vector<std::string>{"xyz", "abc123", std::string(63, 'a'), std::string(65, 'a'), std::string(64, 'g')}) {
    check_fails("file-info " + bad, p2p({"file-info", "--file-id", bad, "--central-server-addr", "127.0.0.1:1"}, dir),
                2, {"file id"});
    check_fails("request-file " + bad, p2p({"request-file", "--file-id", bad, "--peer-addr", "127.0.0.1:1"}, dir), 2,
                {"file id"});
    check_fails("list-peers " + bad, p2p({"list-peers", "--file-id", bad, "--central-server-addr", "127.0.0.1:1"}, dir),
                2, {"file id"});
  }
}

TEST_CASE("an unreachable central server fails with exit 1", "[e2e]") {
  TempDir dir;
  const std::string nobody = unused_address();
  check_fails("list-files", p2p({"list-files", "--central-server-addr", nobody}, dir), 1, {nobody});
  check_fails("list-files --json", p2p({"list-files", "--central-server-addr", nobody, "--json"}, dir), 1, {nobody});
  check_fails("list-peers", p2p({"list-peers", "--central-server-addr", nobody}, dir), 1, {nobody});
  check_fails("file-info", p2p({"file-info", "--central-server-addr", nobody, "--file-id", kUnknownId}, dir), 1,
              {nobody});
}

TEST_CASE("an unknown file id fails with exit 1 for request-file and file-info", "[e2e]") {
  Cluster c(1);
  check_fails("file-info", c.on_central("file-info", {"--file-id", kUnknownId}), 1, {kUnknownId});
  check_fails("file-info --json", c.on_central("file-info", {"--file-id", kUnknownId, "--json"}), 1, {kUnknownId});
  const auto out = c.path("out") / "nothing.bin";
  check_fails("request-file", c.on_peer(0, "request-file", {"--file-id", kUnknownId, "--out", out.string()}), 1,
              {kUnknownId});
  CHECK_FALSE(fs::exists(out));
  check_fails("stop-sharing", c.on_peer(0, "stop-sharing", {"--file-id", kUnknownId}), 1, {kUnknownId});
  // list-peers for a file nobody holds is an empty list, not an error.
  const auto r = c.on_central("list-peers", {"--file-id", kUnknownId, "--json"});
  CHECK(r.exit_code == 0);
  CHECK(r.out == "[]\n");
}

TEST_CASE("register-file with a missing path or a directory fails with exit 1", "[e2e]") {
  Cluster c(1);
  const auto missing = c.files() / "does-not-exist.bin";
  check_fails("missing path", c.on_peer(0, "register-file", {"--path", missing.string()}), 1,
              {"does-not-exist.bin", "no such file"});
  check_fails("directory", c.on_peer(0, "register-file", {"--path", c.files().string()}), 1,
              {c.files().string(), "not a regular file"});
  const auto status = c.on_peer(0, "status", {"--json"});
  REQUIRE(status.exit_code == 0);
  CHECK(parse_json(status)["shared"].empty());
  CHECK(c.list_files().empty());
}

// A download with no live holder fails after a short grace (a holder refresh
// in flight does not count as a source), leaving nothing at --out.
TEST_CASE("request-file fails with exit 1 when no live peer holds the file and leaves nothing at --out", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("orphan.bin", kChunkSize * 3, 5);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  CHECK(Cluster::stop(c.peer(0), SIGTERM) == 0);
  // Once the central server no longer counts it as live, nobody holds the file.
  REQUIRE(wait_for([&] {
    const auto addrs = c.live_addrs(id);
    return addrs && addrs->empty();
  }));
  CHECK(c.holders(id) == 0);

  const auto out = c.path("out") / "orphan.bin";
  // It should give up after a few seconds (3 s without a source); 12 s is a hang.
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()}, 12s);
  check_fails("request-file without holders", r, 1, {id});
  CHECK_FALSE(fs::exists(out));
  // Scripts see which kind of failure it was.
  const auto again = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 12s);
  CHECK(again.exit_code == 1);
  const auto answer = parse_json(again);
  CHECK(answer["error"]["code"] == "no_holders");
  CHECK(contains_ci(answer["error"]["message"].get<std::string>(), id));
  // The failed download is not presented as a file the peer shares.
  const auto status = c.on_peer(1, "status", {"--json"});
  REQUIRE(status.exit_code == 0);
  CHECK(parse_json(status)["shared"].empty());
}

TEST_CASE("a control command with the wrong --data-dir fails with exit 1", "[e2e]") {
  Cluster c(1);
  // A directory without a cookie.
  const auto empty = c.path("empty");
  fs::create_directories(empty);
  check_fails("no cookie", c.on_peer_as(0, empty, "status"), 1, {"cookie", empty.string()});
  check_fails("no such dir", c.on_peer_as(0, c.path("nowhere"), "status"), 1, {"cookie"});
  // A cookie that is not the peer's.
  const auto forged = c.path("forged");
  fs::create_directories(forged);
  write_random_file(forged / "control.cookie", 32, 99);
  check_fails("forged cookie", c.on_peer_as(0, forged, "status", {"--json"}), 1, {"not authorized"});
}
