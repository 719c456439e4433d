// Several central servers on one PostgreSQL database are one registry
// (CONTRACT "More than one machine for the registry", issue 13): a file
// announced through one is found through another; a central server SIGKILLed
// under load loses nothing a peer registered (its peers fail over to another);
// PostgreSQL restarted under load: the central server answers "unavailable"
// meanwhile, reconnects, and loses nothing; bad --store input.
//
// Real binary, real PostgreSQL: the test command's throwaway cluster
// (P2PSHARE_TEST_PG, one fresh database per test), or, for the restart, a
// private cluster of this test's own (tests/pg/cluster.sh in a temp dir), so
// that stopping it disturbs no other test.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "central.pb.h"
#include "e2e.hpp"
#include "p2pshare/protocol.hpp"
#include "support/hostile.hpp"
#include "support/http_client.hpp"
#include "support/pg.hpp"
#include "support/tls_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

namespace {

const char* const kPgBin = "/usr/lib/postgresql/15/bin";

std::string source_dir() {
#ifdef P2PSHARE_SOURCE_DIR
  return P2PSHARE_SOURCE_DIR;
#else
  return ".";
#endif
}

// Central servers on one store and peer-servers given any list of them, each
// with its own data dir under one TempDir; client commands take any list.
class PgRegistry {
 public:
  explicit PgRegistry(std::string store) : store_(std::move(store)) {
    fs::create_directories(logs());
    fs::create_directories(dir_ / "files");
  }
  ~PgRegistry() {
    if (e2e_failure_seen() || std::uncaught_exceptions() > 0) std::cerr << server_logs() << std::flush;
  }
  PgRegistry(const PgRegistry&) = delete;
  PgRegistry& operator=(const PgRegistry&) = delete;

  fs::path logs() const { return dir_ / "logs"; }
  fs::path path(const std::string& name) const { return dir_ / name; }

  // A new central server on the store; its index.
  std::size_t add_central(const std::vector<std::string>& more = {}) {
    auto node = std::make_unique<Node>();
    node->name = "central" + std::to_string(centrals_.size());
    node->data_dir = dir_ / node->name;
    fs::create_directories(node->data_dir);
    std::vector<std::string> args{
        binary(), "central-server",       "--addr", "127.0.0.1:0", "--data-dir", node->data_dir.string(), "--store",
        store_,   "--heartbeat-interval", "200"};
    args.insert(args.end(), more.begin(), more.end());
    node->process = std::make_unique<Process>(args, logs());
    node->addr = node->process->wait_listening(20s);
    centrals_.push_back(std::move(node));
    return centrals_.size() - 1;
  }
  Node& central(std::size_t i) { return *centrals_.at(i); }

  // A new peer-server that uses the central servers `which`, in that order.
  std::size_t add_peer(const std::vector<std::size_t>& which) {
    auto node = std::make_unique<Node>();
    node->name = "peer" + std::to_string(peers_.size());
    node->data_dir = dir_ / node->name / "data";
    node->download_dir = dir_ / node->name / "downloads";
    node->process = std::make_unique<Process>(
        std::vector<std::string>{binary(), "peer-server", "--central-server-addr", addrs(which), "--addr",
                                 "127.0.0.1:0", "--data-dir", node->data_dir.string(), "--download-dir",
                                 node->download_dir.string(), "--holder-refresh", "200", "--request-timeout", "2000"},
        logs());
    node->addr = node->process->wait_listening();
    peers_.push_back(std::move(node));
    return peers_.size() - 1;
  }
  Node& peer(std::size_t i) { return *peers_.at(i); }

  // "A,B,..." of the central servers `which`.
  std::string addrs(const std::vector<std::size_t>& which) const {
    std::string list;
    for (std::size_t i : which) list += (list.empty() ? "" : ",") + centrals_.at(i)->addr;
    return list;
  }

  RunResult run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 30s) const {
    std::vector<std::string> full{binary()};
    full.insert(full.end(), args.begin(), args.end());
    return p2pshare::test::run(full, logs(), timeout);
  }
  // A command to the central servers `which` (in that order).
  RunResult on_centrals(const std::vector<std::size_t>& which, const std::string& command,
                        std::vector<std::string> args = {}) const {
    std::vector<std::string> full{command, "--central-server-addr", addrs(which)};
    full.insert(full.end(), args.begin(), args.end());
    return run(full);
  }
  RunResult on_peer(std::size_t i, const std::string& command, std::vector<std::string> args = {},
                    std::chrono::milliseconds timeout = 30s) {
    std::vector<std::string> full{command, "--peer-addr", peer(i).addr, "--data-dir", peer(i).data_dir.string()};
    full.insert(full.end(), args.begin(), args.end());
    return run(full, timeout);
  }

  // create-user USER on peer i (the password on stdin).
  RunResult create_user(std::size_t i, const std::string& user) {
    const fs::path file = dir_ / ("password-" + user);
    std::ofstream(file) << "correct horse battery staple\n";
    return p2pshare::test::run(
        {"/bin/sh", "-c", "f=$1; shift; exec \"$@\" < \"$f\"", "sh", file.string(), binary(), "create-user", "--user",
         user, "--password-stdin", "--peer-addr", peer(i).addr, "--data-dir", peer(i).data_dir.string()},
        logs(), 30s);
  }

  fs::path make_file(const std::string& name, std::uint64_t size, std::uint64_t seed) {
    const fs::path p = dir_ / "files" / name;
    write_random_file(p, size, seed);
    return p;
  }
  std::string register_file(std::size_t peer_index, const fs::path& file) {
    const auto r = on_peer(peer_index, "register-file", {"--path", file.string()});
    if (r.exit_code != 0 || r.out.size() != 65)
      throw std::runtime_error("register-file " + file.string() + " failed: " + describe(r));
    return r.out.substr(0, 64);
  }

  // The file ids list-files shows through central `i` (nullopt: it failed).
  std::optional<std::set<std::string>> listed(std::size_t i) const {
    const auto r = on_centrals({i}, "list-files", {"--json"});
    if (r.exit_code != 0) return std::nullopt;
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (!j.is_array()) return std::nullopt;
    std::set<std::string> ids;
    for (const auto& f : j) ids.insert(f.value("file_id", ""));
    return ids;
  }
  // Live holders of `id` per list-files through central `i`; -1 if not listed.
  int holders(std::size_t i, const std::string& id) const {
    const auto r = on_centrals({i}, "list-files", {"--json"});
    if (r.exit_code != 0) return -1;
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (!j.is_array()) return -1;
    for (const auto& f : j) {
      if (f.value("file_id", "") == id) return f.value("holders", -1);
    }
    return -1;
  }
  // True once central `i` lists every id in `ids`, each with a live holder.
  bool lists_all(std::size_t i, const std::vector<std::string>& ids, std::chrono::milliseconds timeout) const {
    return wait_for(
        [&] {
          for (const auto& id : ids) {
            if (holders(i, id) < 1) return false;
          }
          return true;
        },
        timeout);
  }

  std::string server_logs() const {
    std::string text;
    auto add = [&](const Node& n) {
      if (!n.process) return;
      text += "----- " + n.name + " stdout -----\n" + n.process->out() + "----- " + n.name + " stderr -----\n" +
              n.process->err();
    };
    for (const auto& n : centrals_) add(*n);
    for (const auto& n : peers_) add(*n);
    return text;
  }

 private:
  TempDir dir_;
  std::string store_;
  std::vector<std::unique_ptr<Node>> centrals_;
  std::vector<std::unique_ptr<Node>> peers_;
};

// `bash -c script` with the cluster dir in $1; throws with its output when it fails.
void shell(const std::string& script, const fs::path& dir, const fs::path& logs) {
  const auto r = run({"/bin/bash", "-c", script, "pg", dir.string()}, logs, 60s);
  if (r.exit_code != 0) throw std::runtime_error("shell step failed: " + describe(r) + "\nscript: " + script);
}

// As the cluster's owner: the postgres user when we are root (initdb and the
// server refuse root), ourselves otherwise.
const std::string kAsOwner =
    R"sh(as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }; as_owner )sh";

// A private PostgreSQL of this test's own (tests/pg/cluster.sh), which the
// test may stop and start; stopped and removed at scope end.
class PrivatePg {
 public:
  PrivatePg() {
    // A short path: the unix socket's path must fit in 107 bytes.
    std::string pattern = "/tmp/p2ps-pg-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    // The postgres user (when we are root) must reach the cluster inside.
    fs::permissions(pattern, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                 fs::perms::others_read | fs::perms::others_exec);
    dir_ = fs::path(pattern) / "c";
    logs_ = fs::path(pattern);
    const auto r = run({"/bin/bash", script(), "start", dir_.string()}, logs_, 120s);
    if (r.exit_code != 0) throw std::runtime_error("cluster.sh start failed: " + describe(r));
    url_ = lines_of(r.out).empty() ? "" : lines_of(r.out).front();
    // The start options are also written into its configuration, so that a
    // plain `pg_ctl start` brings it back the same after a stop.
    shell(
        "printf \"listen_addresses = ''\\nunix_socket_directories = '%s'\\nfsync = off\\n"
        "synchronous_commit = off\\n\" \"$1\" >> \"$1/data/postgresql.conf\"",
        dir_, logs_);
  }
  ~PrivatePg() {
    run({"/bin/bash", script(), "stop", dir_.string()}, logs_, 60s);
    std::error_code ignored;
    fs::remove_all(logs_, ignored);
  }
  PrivatePg(const PrivatePg&) = delete;
  PrivatePg& operator=(const PrivatePg&) = delete;

  const std::string& url() const { return url_; }

  // pg_ctl stop -m fast: every session is ended at once.
  void stop() { shell(kAsOwner + std::string(kPgBin) + "/pg_ctl -D \"$1/data\" -s -m fast -w stop", dir_, logs_); }
  void start() {
    shell(kAsOwner + std::string(kPgBin) + "/pg_ctl -D \"$1/data\" -l \"$1/server.log\" -s -w start", dir_, logs_);
  }

 private:
  static std::string script() { return source_dir() + "/tests/pg/cluster.sh"; }
  fs::path dir_;
  fs::path logs_;
  std::string url_;
};

}  // namespace

TEST_CASE("two central servers on one PostgreSQL: announced through one, found and fetched through the other",
          "[e2e][pg]") {
  FreshPgDatabase db;
  PgRegistry reg(db.url());
  const auto a = reg.add_central();
  const auto b = reg.add_central();
  const auto seed = reg.add_peer({a});    // knows only A
  const auto getter = reg.add_peer({b});  // knows only B

  const auto src = reg.make_file("shared.bin", kChunkSize * 3 + 77, 41);
  const std::string id = reg.register_file(seed, src);

  // list-files through B shows the file A took, with its holder.
  REQUIRE(reg.lists_all(b, {id}, 10s));
  const auto list = reg.on_centrals({b}, "list-files", {"--json"});
  REQUIRE(list.exit_code == 0);
  const auto files = parse_json(list);
  REQUIRE(files.size() == 1);
  CHECK(files[0]["name"] == "shared.bin");
  CHECK(files[0]["size"] == kChunkSize * 3 + 77);

  // file-info through B: the manifest and the holder that registered with A.
  const auto info = reg.on_centrals({b}, "file-info", {"--file-id", id, "--json"});
  INFO(describe(info));
  REQUIRE(info.exit_code == 0);
  const auto j = parse_json(info);
  CHECK(j["chunks"] == 4);
  REQUIRE(j["holders"].size() == 1);
  CHECK(j["holders"][0]["addr"] == reg.peer(seed).addr);

  // A peer that only knows B downloads it: its holders came from A.
  const auto out = reg.path("out") / "shared.bin";
  const auto got = reg.on_peer(getter, "request-file", {"--file-id", id, "--out", out.string()}, 60s);
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  CHECK(files_equal(src, out));
  // And A now lists the getter as a second holder (it announced through B).
  CHECK(wait_for([&] { return reg.holders(a, id) == 2; }, 10s));
}

TEST_CASE("a flood of unknown file ids reads the change log at most once per 10 ms", "[e2e][pg]") {
  FreshPgDatabase db;
  PgRegistry reg(db.url());
  const auto a = reg.add_central({"--http-addr", "127.0.0.1:0"});
  const std::string http = http_of(reg.central(a));
  auto counter = [&](const std::string& name) { return central_metric(http, name); };

  // One connection, every GetFile sent at once: the server reads them
  // back to back, each a miss (nobody registered these ids).
  constexpr int kLookups = 400;
  const int fd = raw_connect(reg.central(a).addr);
  REQUIRE(fd >= 0);
  TlsClient tls(fd);
  std::string burst = frame(protocol::hello(pb::PLANE_CENTRAL));
  for (int i = 0; i < kLookups; ++i) {
    pb::CentralRequest request;
    request.set_request_id(static_cast<std::uint64_t>(i) + 1);
    std::string id(32, '\x5a');
    id[0] = static_cast<char>(i & 0xff);
    id[1] = static_cast<char>(i >> 8);
    request.mutable_get_file()->set_file_id(id);
    burst += frame(request.SerializeAsString());
  }
  const double reads_before = counter("p2pshare_central_change_log_reads_total");
  const double misses_before = counter("p2pshare_central_change_log_miss_reads_total");
  REQUIRE(misses_before >= 0);
  const auto start = std::chrono::steady_clock::now();
  tls.send(burst);
  // Every answer is an error naming the unknown file; count whole frames.
  std::string plain;
  int answers = 0;
  const auto deadline = start + 60s;
  while (answers < kLookups && std::chrono::steady_clock::now() < deadline && !tls.closed()) {
    plain += tls.receive(8, 1s);
    while (plain.size() >= 8) {
      std::uint32_t length = 0;
      for (int i = 0; i < 4; ++i) length = length << 8 | static_cast<std::uint8_t>(plain[i]);
      REQUIRE(length <= protocol::kCentralLimits.max_message);
      if (plain.size() < 8 + length) break;
      pb::CentralResponse response;
      REQUIRE(response.ParseFromArray(plain.data() + 8, static_cast<int>(length)));
      CHECK(response.has_error());
      plain.erase(0, 8 + length);
      ++answers;
    }
  }
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ::close(fd);
  REQUIRE(answers == kLookups);

  // The misses forced reads (the file could have come through another
  // central server), but at most one per 10 ms of the burst, not one each.
  const double misses = counter("p2pshare_central_change_log_miss_reads_total") - misses_before;
  const auto bound =
      static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() / 10 + 1);
  INFO("burst took " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms; " << misses
                     << " miss reads");
  CHECK(misses >= 1);
  CHECK(misses <= bound);
  CHECK(counter("p2pshare_central_change_log_reads_total") - reads_before >= misses);
  CHECK(counter("p2pshare_central_change_log_read_failures_total") == 0);
}

TEST_CASE("a central server SIGKILLed under load: its peers fail over and no registered file is lost", "[e2e][pg]") {
  FreshPgDatabase db;
  PgRegistry reg(db.url());
  const auto a = reg.add_central();
  const auto b = reg.add_central();
  std::vector<std::size_t> peers;
  for (int i = 0; i < 3; ++i) peers.push_back(reg.add_peer({a, b}));  // A first, then B

  // Files registered in the background on every peer while A is killed.
  std::vector<std::pair<std::size_t, fs::path>> sources;
  for (std::size_t p : peers) {
    for (int k = 0; k < 6; ++k) {
      const std::string name = "p" + std::to_string(p) + "-" + std::to_string(k) + ".bin";
      sources.emplace_back(p, reg.make_file(name, kChunkSize + 1000 * k + p, 100 + 10 * p + k));
    }
  }
  std::vector<std::string> registered;
  std::mutex mutex;
  auto register_range = [&](std::size_t first, std::size_t last) {
    std::vector<std::thread> threads;
    for (std::size_t s = first; s < last; ++s) {
      threads.emplace_back([&, s] {
        const auto r = reg.on_peer(sources[s].first, "register-file", {"--path", sources[s].second.string()});
        if (r.exit_code == 0 && r.out.size() == 65) {
          const std::lock_guard lock(mutex);
          registered.push_back(r.out.substr(0, 64));
        }
      });
    }
    return threads;
  };
  // Half of them, then the kill while they run, then the rest.
  auto first = register_range(0, sources.size() / 2);
  REQUIRE(wait_for(
      [&] {
        const std::lock_guard lock(mutex);
        return registered.size() >= 2;
      },
      20s));
  Cluster::kill(reg.central(a));
  auto second = register_range(sources.size() / 2, sources.size());
  for (auto& t : first) t.join();
  for (auto& t : second) t.join();
  INFO("registered " << registered.size() << " of " << sources.size());
  // register-file talks to the peer-server, not the central server: every one succeeds.
  REQUIRE(registered.size() == sources.size());

  // Every file whose register-file succeeded is listed through B, held live.
  CHECK(reg.lists_all(b, registered, 20s));
  // And each peer now reports B as its central server.
  for (std::size_t p : peers) {
    const auto st = reg.on_peer(p, "status", {"--json"});
    INFO(describe(st));
    CHECK(st.exit_code == 0);
    CHECK(contains_ci(st.out, reg.central(b).addr));
  }
  // A client given A,B answers from B.
  const auto list = reg.on_centrals({a, b}, "list-files", {"--json"});
  INFO(describe(list));
  REQUIRE(list.exit_code == 0);
  CHECK(parse_json(list).size() == sources.size());
}

TEST_CASE("PostgreSQL restarted under load: unavailable meanwhile, then nothing registered is lost", "[e2e][pg]") {
  PrivatePg pg;
  REQUIRE(!pg.url().empty());
  PgRegistry reg(pg.url());
  const auto a = reg.add_central();
  const auto p = reg.add_peer({a});

  std::vector<std::string> ids;
  for (int k = 0; k < 3; ++k)
    ids.push_back(reg.register_file(p, reg.make_file("before" + std::to_string(k), kChunkSize + k, 200 + k)));
  REQUIRE(reg.lists_all(a, ids, 10s));

  pg.stop();
  // A write the central server cannot make while PostgreSQL is gone: an
  // account (create-user, through the peer-server) is "unavailable", one
  // line, exit 1.
  const auto down = reg.create_user(p, "during_outage");
  check_fails("create-user while PostgreSQL is down", down, 1);
  INFO(describe(down));
  CHECK(contains_ci(down.err, "unavailable"));
  CHECK_FALSE(contains_ci(down.err, "postgresql:"));  // where the database is stays in the server's log
  // The central server is still up, and the peer keeps registering (its
  // announces wait for the store to come back).
  REQUIRE(reg.central(a).running());
  for (int k = 0; k < 2; ++k)
    ids.push_back(reg.register_file(p, reg.make_file("during" + std::to_string(k), kChunkSize + 50 + k, 300 + k)));

  pg.start();
  for (int k = 0; k < 2; ++k)
    ids.push_back(reg.register_file(p, reg.make_file("after" + std::to_string(k), kChunkSize + 90 + k, 400 + k)));
  // Reconnected: writes work again (the account refused meanwhile can be made) ...
  CHECK(wait_for([&] { return reg.create_user(p, "during_outage").exit_code == 0; }, 30s));
  // ... and every file is listed through A ...
  CHECK(reg.lists_all(a, ids, 30s));
  CHECK(reg.central(a).running());
  // ... and is in PostgreSQL, not only in A's memory: a second central server
  // that loads from the database lists them all.
  const auto b = reg.add_central();
  const auto at_b = reg.listed(b);
  REQUIRE(at_b.has_value());
  for (const auto& id : ids) {
    INFO(id);
    CHECK(at_b->count(id) == 1);
  }
}

TEST_CASE("central-server --store: a malformed URL is exit 2, refused credentials exit 1, one line each", "[e2e][pg]") {
  TempDir dir;
  auto start = [&](const std::string& store) {
    return run(
        {binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir", (dir / "c").string(), "--store", store},
        dir.path(), 30s);
  };
  for (const std::string bad :
       {"postgresql://[::1", "postgresql://%zz@host/db", "mysql://user@host/db", "postgresql:///db?nosuchoption=1"}) {
    check_fails("--store " + bad, start(bad), 2);
  }
  // A role the cluster does not have: PostgreSQL refuses the connection.
  const std::string url = test_pg_url();
  std::string refused = url;
  const auto at = refused.find("user=postgres");
  REQUIRE(at != std::string::npos);
  refused.replace(at, 13, "user=p2pshare_no_such_role");
  const auto r = start(refused);
  check_fails("--store with a role that does not exist", r, 1);
  CHECK(contains_ci(r.err, "p2pshare_no_such_role"));
}
