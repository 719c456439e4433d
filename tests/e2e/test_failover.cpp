// Failover between central servers (--central-server-addr A,B,...): two
// central servers, each on its own SQLite data dir (so each has its own key,
// recorded per address in known_centrals). A peer-server moves to the next
// one when the one in use is killed, registers there and announces what it
// holds, while downloads go on; client commands try the list in order.
#include <catch2/catch.hpp>

#include <fstream>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

ClusterOptions failover_options() {
  ClusterOptions options;
  options.heartbeat_ms = 200;
  options.holder_refresh_ms = 200;
  return options;
}

// A second central server beside the cluster's, on its own data dir.
std::unique_ptr<Process> start_second_central(const Cluster& c, std::string& addr) {
  auto p = std::make_unique<Process>(
      std::vector<std::string>{binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir",
                               c.path("central-b").string(), "--heartbeat-interval", "200"},
      c.logs());
  addr = p->wait_listening();
  return p;
}

// list-files --json through `list`; the file ids listed, or nullopt when it failed.
std::optional<std::vector<std::string>> listed_ids(const Cluster& c, const std::string& list) {
  const auto r = c.run({"list-files", "--central-server-addr", list, "--json"});
  if (r.exit_code != 0) return std::nullopt;
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (!j.is_array()) return std::nullopt;
  std::vector<std::string> ids;
  for (const auto& f : j) ids.push_back(f.value("file_id", ""));
  return ids;
}

bool lists(const Cluster& c, const std::string& central, const std::string& id) {
  const auto ids = listed_ids(c, central);
  return ids && std::find(ids->begin(), ids->end(), id) != ids->end();
}

}  // namespace

TEST_CASE("failover: peers move to the next central server when theirs is killed, and the download goes on",
          "[e2e][failover]") {
  Cluster c(0, failover_options());
  std::string b;
  auto central_b = start_second_central(c, b);
  const std::string a = c.central_addr();
  c.set_peer_central_list(a + "," + b);

  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("kept.bin", size, 13);
  const auto id = c.add_seed(src, "2M");  // peer0: about 4 s for the whole file
  c.add_peer();                           // peer1, the downloader
  REQUIRE(c.wait_holders(id, 1));
  // Both use A, the first of the list; B has never heard of them.
  CHECK(c.status_json(0).value("central_addr", "") == a);
  CHECK(listed_ids(c, b) == std::vector<std::string>{});

  const auto out = c.path("got") / "kept.bin";
  auto request = c.request_in_background(1, id, out);
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) > 0; }, 20s));
  Cluster::kill(c.central());
  const auto killed_at = std::chrono::steady_clock::now();

  // The seed registers with B and announces its file there.
  REQUIRE(wait_for([&] { return lists(c, b, id); }, 10s));
  INFO("listed through B " << elapsed_since(killed_at) << " s after A was killed");
  const auto status = c.status_json(0);
  CHECK(status.value("central_addr", "") == b);
  CHECK(status.value("central_connected", false));
  CHECK(contains_ci(c.peer(0).process->err() + c.peer(0).process->out(), "central server " + a + " stopped answering"));
  CHECK(contains_ci(c.peer(0).process->err() + c.peer(0).process->out(), "using " + b));

  // The download started before the kill completes, verified.
  const auto r = finish_process(*request, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  CHECK(files_equal(src, out));
  // The downloader moved too, and now holds the whole file: B lists both.
  CHECK(wait_for([&] { return c.status_json(1).value("central_addr", "") == b; }, 10s));

  // A client given A,B with A dead answers from B.
  const auto via_list = c.run({"list-files", "--central-server-addr", a + "," + b, "--json"});
  INFO(describe(via_list));
  CHECK(via_list.exit_code == 0);
  CHECK(contains_ci(via_list.out, id));
  const auto info = c.run({"file-info", "--central-server-addr", a + "," + b, "--file-id", id, "--json"});
  INFO(describe(info));
  CHECK(info.exit_code == 0);
  const auto peers = c.run({"list-peers", "--central-server-addr", a + "," + b, "--file-id", id, "--json"});
  INFO(describe(peers));
  CHECK(peers.exit_code == 0);
  CHECK(contains_ci(peers.out, c.peer(0).addr));
}

TEST_CASE("failover: a peer-server whose first central server is down registers with the next", "[e2e][failover]") {
  Cluster c(0, failover_options());
  const std::string dead = unused_address();
  c.set_peer_central_list(dead + "," + c.central_addr());
  c.add_peer();  // waits until it is live at the cluster's central server
  const auto id = c.register_file(0, c.make_file("late.bin", 300000, 5));
  REQUIRE(c.wait_holders(id, 1));
  const auto status = c.on_peer(0, "status");
  INFO(describe(status));
  CHECK(status.exit_code == 0);
  CHECK(contains_ci(status.out, "central server " + c.central_addr() + " connected"));
}

TEST_CASE("failover: client commands try the list in order, and all dead is one line naming them, exit 1",
          "[e2e][failover]") {
  Cluster c(1, failover_options());
  const auto id = c.register_file(0, c.make_file("one.bin", 100000, 3));
  REQUIRE(c.wait_holders(id, 1));
  const std::string dead1 = unused_address();
  const std::string dead2 = unused_address();

  const auto r = c.run({"list-files", "--central-server-addr", dead1 + "," + c.central_addr(), "--json"});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(contains_ci(r.out, id));

  check_fails("list-files with every central server down",
              c.run({"list-files", "--central-server-addr", dead1 + "," + dead2}), 1,
              {"no central server answered", dead1, dead2});
  check_fails("file-info with every central server down",
              c.run({"file-info", "--central-server-addr", dead1 + "," + dead2, "--file-id", id}), 1, {dead1, dead2});
  // A refusal from a live central server is its answer, not a reason to ask the next.
  const std::string unknown(64, 'a');
  check_fails("file-info of an unknown file",
              c.run({"file-info", "--central-server-addr", c.central_addr() + "," + dead1, "--file-id", unknown}), 1);

  // The config file takes the list as a string or as a TOML array.
  const auto config = c.path("config.toml");
  std::ofstream(config) << "central-server-addr = [\"" << dead1 << "\", \"" << c.central_addr() << "\"]\n";
  const auto from_file = c.run({"list-files", "--config", config.string(), "--json"});
  INFO(describe(from_file));
  CHECK(from_file.exit_code == 0);
  CHECK(contains_ci(from_file.out, id));
  std::ofstream(config) << "central-server-addr = \"" << dead1 << "," << dead1 << "\"\n";
  check_fails("a config file listing an address twice", c.run({"list-files", "--config", config.string()}), 2,
              {"config.toml:1", "listed twice"});
}

TEST_CASE("failover: a bad --central-server-addr list is one line, exit 2", "[e2e][failover]") {
  Cluster c(0);
  const std::string a = c.central_addr();
  std::string seventeen;
  for (int i = 0; i < 17; ++i) seventeen += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(2000 + i);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {a + ",", "empty item"},       {"," + a, "empty item"},     {a + ",," + a, "empty item"},
      {a + "," + a, "listed twice"}, {a + ",nowhere", "nowhere"}, {seventeen, "at most 16"}};
  for (const auto& [list, words] : bad) {
    check_fails("list-files --central-server-addr '" + list + "'", c.run({"list-files", "--central-server-addr", list}),
                2, {words});
    check_fails("peer-server --central-server-addr '" + list + "'",
                c.run({"peer-server", "--central-server-addr", list, "--addr", "127.0.0.1:0", "--data-dir",
                       c.path("never").string()},
                      10s),
                2, {words});
  }
}

TEST_CASE("failover: a central server that hangs (SIGSTOP) is left for the next once heartbeats go unanswered",
          "[e2e][failover]") {
  Cluster c(0, failover_options());
  std::string b;
  auto central_b = start_second_central(c, b);
  const std::string a = c.central_addr();
  c.set_peer_central_list(a + "," + b);
  c.add_peer();
  const auto id = c.register_file(0, c.make_file("hung.bin", 200000, 9));
  REQUIRE(c.wait_holders(id, 1));

  // The connection stays open (the kernel holds it), but nothing answers:
  // three heartbeat intervals, at least 2 s, then the peer moves to B.
  c.central().process->signal(SIGSTOP);
  const auto stopped_at = std::chrono::steady_clock::now();
  REQUIRE(wait_for([&] { return lists(c, b, id); }, 15s));
  INFO("listed through B " << elapsed_since(stopped_at) << " s after A hung");
  CHECK(c.status_json(0).value("central_addr", "") == b);
  // A client given A,B waits out A's handshake deadline, then answers from B.
  const auto r = c.run({"list-files", "--central-server-addr", a + "," + b, "--json"}, 30s);
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(contains_ci(r.out, id));
  c.central().process->signal(SIGCONT);
}

TEST_CASE("failover: a share link made through one central server still downloads after both peers moved to the next",
          "[e2e][failover]") {
  Cluster c(0, failover_options());
  std::string b;
  auto central_b = start_second_central(c, b);
  const std::string a = c.central_addr();
  c.set_peer_central_list(a + "," + b);
  c.add_peer();
  c.add_peer();
  const auto src = c.make_file("linked.bin", 3 * kChunkSize + 7, 21);
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  // The link names A, the central server in use, with A's key.
  const auto share = c.on_peer(0, "share-link", {"--file-id", id});
  INFO(describe(share));
  REQUIRE(share.exit_code == 0);
  const std::string link = lines_of(share.out).at(0);
  CHECK(link.find("&central=" + a + "&") != std::string::npos);

  Cluster::kill(c.central());
  REQUIRE(wait_for([&] { return lists(c, b, id); }, 10s));
  REQUIRE(wait_for([&] { return c.status_json(1).value("central_addr", "") == b; }, 10s));
  // B has its own key; A's is the one recorded for A, an address of the list: accepted.
  const auto got = c.on_peer(1, "request-file", {"--link", link, "--json"});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  CHECK(files_equal(src, parse_json(got)["path"].get<std::string>()));
  // A new link names B now.
  const auto again = c.on_peer(0, "share-link", {"--file-id", id});
  CHECK(again.out.find("&central=" + b + "&") != std::string::npos);
}
