// --help and --version.
#include <catch2/catch.hpp>

#include <regex>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

const std::vector<std::string> kCommands = {"central-server", "peer-server", "register-file",  "request-file",
                                            "stop-sharing",   "status",      "list-files",     "list-peers",
                                            "file-info",      "share-link",  "export-manifest"};

}  // namespace

TEST_CASE("the binary prints its version", "[e2e]") {
  TempDir dir;
  auto r = p2p({"--version"}, dir);
  CHECK(r.exit_code == 0);
  // "p2pshare 0.1.0 (commit e613621)": the project version, then the commit
  // it was built from (-dirty: with uncommitted changes) or "unknown".
  const std::regex line(std::string("p2pshare ") + std::regex_replace(P2PSHARE_VERSION, std::regex(R"(\.)"), R"(\.)") +
                        R"( \(commit ([0-9a-f]{7,}(-dirty)?|unknown)\)\n)");
  CHECK(std::regex_match(r.out, line));
  CHECK(r.err.empty());
}

TEST_CASE("p2pshare --help lists every command with one line each", "[e2e]") {
  TempDir dir;
  const auto r = p2p({"--help"}, dir);
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(r.err.empty());
  for (const auto& name : kCommands) {
    INFO(name);
    int lines = 0;
    for (const auto& line : lines_of(r.out)) {
      // "  NAME   summary"
      const auto first = line.find_first_not_of(' ');
      if (first != std::string::npos && line.compare(first, name.size() + 1, name + " ") == 0) ++lines;
    }
    CHECK(lines == 1);
  }
}

TEST_CASE("p2pshare without a command prints usage on stderr and exits 2", "[e2e]") {
  TempDir dir;
  const auto r = p2p({}, dir);
  CHECK(r.exit_code == 2);
  CHECK(r.out.empty());
  CHECK(contains_ci(r.err, "usage"));
}

TEST_CASE("p2pshare <command> --help exits 0 and shows the options with their defaults", "[e2e]") {
  TempDir dir;
  // Each command: options and defaults its help must show.
  const std::vector<std::pair<std::string, std::vector<std::string>>> expected = {
      {"central-server", {"--addr", "--data-dir", "--heartbeat-interval", "10000"}},
      {"peer-server",
       {"--central-server-addr", "--addr", "--data-dir", "--download-dir", "--upload-limit", "--download-limit"}},
      {"register-file", {"--path", "--peer-addr", "127.0.0.1:7071", "--data-dir", "--json"}},
      {"request-file",
       {"--file-id", "--out", "--wait", "--peer-addr", "127.0.0.1:7071", "--data-dir", "--json", "--link",
        "--manifest"}},
      {"stop-sharing", {"--file-id", "--peer-addr", "127.0.0.1:7071", "--json"}},
      {"status", {"--peer-addr", "127.0.0.1:7071", "--data-dir", "--json"}},
      {"list-files", {"--central-server-addr", "127.0.0.1:7070", "--json"}},
      {"list-peers", {"--file-id", "--central-server-addr", "127.0.0.1:7070", "--json"}},
      {"file-info", {"--file-id", "--central-server-addr", "127.0.0.1:7070", "--json"}},
      {"share-link", {"--file-id", "--peer-addr", "127.0.0.1:7071", "--data-dir", "--json", "--config"}},
      {"export-manifest", {"--file-id", "--out", "--peer-addr", "127.0.0.1:7071", "--json", "--config"}},
  };
  REQUIRE(expected.size() == kCommands.size());
  for (const auto& [name, words] : expected) {
    const auto r = p2p({name, "--help"}, dir);
    INFO(name << "\n" << describe(r));
    CHECK(r.exit_code == 0);
    CHECK(r.err.empty());
    CHECK(contains_ci(r.out, "default"));
    for (const auto& w : words) {
      INFO("help should show: " << w);
      CHECK(r.out.find(w) != std::string::npos);
    }
  }
  // The servers' rate limits default to unlimited, shown as such.
  const auto peer = p2p({"peer-server", "--help"}, dir);
  CHECK(peer.out.find("default: 0") != std::string::npos);
}
