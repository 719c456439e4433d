// Replicas and volunteer caches: register-file --replicas N, peer-server
// --cache-dir/--cache-limit (docs/protocol.md, "Replicas and volunteer caches").
#include <catch2/catch.hpp>

#include "e2e.hpp"
#include "support/http_client.hpp"

using namespace p2pshare::test;

namespace {

nlohmann::json file_info(const Cluster& c, const std::string& id) {
  const auto r = c.on_central("file-info", {"--file-id", id, "--json"});
  if (r.exit_code != 0) return nullptr;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  return j.is_object() ? j : nullptr;
}

int live_copies(const Cluster& c, const std::string& id) {
  const auto j = file_info(c, id);
  return j.is_object() ? j.value("live_copies", -1) : -1;
}

// The peer's cache copy of the file, from status --json (null: none).
nlohmann::json cached_entry(Cluster& c, std::size_t i, const std::string& id) {
  const auto j = c.status_json(i);
  if (!j.is_object()) return nullptr;
  for (const auto& s : j.value("shared", nlohmann::json::array())) {
    if (s.value("file_id", "") == id && s.value("cached", false)) return s;
  }
  return nullptr;
}

// Anything of the file on the peer: shared or downloading.
bool touches(Cluster& c, std::size_t i, const std::string& id) {
  const auto j = c.status_json(i);
  if (!j.is_object()) return false;
  for (const auto* list : {"shared", "downloads"}) {
    for (const auto& s : j.value(list, nlohmann::json::array())) {
      if (s.value("file_id", "") == id) return true;
    }
  }
  return false;
}

std::string register_with_replicas(Cluster& c, std::size_t i, const fs::path& file, int n) {
  const auto r = c.on_peer(i, "register-file", {"--path", file.string(), "--replicas", std::to_string(n)});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  REQUIRE(r.out.size() == 65);
  return r.out.substr(0, 64);
}

std::vector<std::string> volunteer(Cluster& c, const std::string& name, const std::string& limit) {
  return {"--cache-dir", c.path(name).string(), "--cache-limit", limit};
}

// Behind the owner (peer 0): peer 1 a volunteer with room for two of three
// 2 MiB files, peer 2 a second holder (so the volunteer's copies are spare),
// peer 3 a downloader. The volunteer's arguments, for its restarts.
std::vector<std::string> add_lru_peers(Cluster& c) {
  auto cache = volunteer(c, "cache", "5M");
  c.add_peer(true, cache);
  c.add_peer(true);
  c.add_peer(true);
  return cache;
}

// The LRU time of the peer's cache copy of the file (status --json); 0: none.
std::int64_t last_used_ms(Cluster& c, std::size_t i, const std::string& id) {
  const auto entry = cached_entry(c, i, id);
  return entry.is_object() ? entry.value("last_used_ms", std::int64_t{0}) : 0;
}

void download(Cluster& c, std::size_t i, const std::string& id, const std::string& name) {
  const auto out = c.path("out" + std::to_string(i)) / name;
  const auto r = c.on_peer(i, "request-file", {"--file-id", id, "--out", out.string()});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
}

// Peer 2 copies two files from the owner while the volunteer (peer 1, whose
// arguments are `cache`) is down, so the volunteer serves neither; then the
// volunteer is back and holds both.
void copy_past_the_volunteer(Cluster& c, const std::vector<std::string>& cache, const std::string& first,
                             const std::string& second) {
  REQUIRE(Cluster::stop(c.peer(1)) == 0);
  download(c, 2, first, "first.bin");
  download(c, 2, second, "second.bin");
  c.start_peer_with(1, cache);
  REQUIRE(wait_for([&] { return c.is_live(1, first) && c.is_live(1, second); }, 10s));
}

}  // namespace

TEST_CASE("replicas: two volunteers fetch a file with --replicas 2 and it outlives its owner", "[e2e][replicas]") {
  Cluster c(1);
  auto first = volunteer(c, "cache1", "64M");
  first.insert(first.end(), {"--http-addr", "127.0.0.1:0"});
  c.add_peer(true, first);
  c.add_peer(true, volunteer(c, "cache2", "64M"));
  c.add_peer(true);  // downloads it once the owner is gone
  const auto src = c.make_file("kept.bin", 3 * kMiB + 123, 41);
  const std::string id = register_with_replicas(c, 0, src, 2);

  REQUIRE(wait_for([&] { return live_copies(c, id) == 2; }, 30s));
  const auto info = file_info(c, id);
  CHECK(info.value("replicas", 0) == 2);
  for (std::size_t v : {1, 2}) {
    const auto entry = cached_entry(c, v, id);
    INFO("volunteer " << v);
    REQUIRE(entry.is_object());
    CHECK(fs::path(entry.value("path", "")).parent_path() == c.path(v == 1 ? "cache1" : "cache2"));
    CHECK(files_equal(entry.value("path", ""), src));
  }
  const auto text = c.on_central("file-info", {"--file-id", id});
  CHECK(contains_ci(text.out, "replicas    target 2, live copies 2"));
  const auto status = c.on_peer(1, "status");
  CHECK(contains_ci(status.out, "seeding (cache)"));
  CHECK(contains_ci(status.out, "cache: "));
  // The HTTP API says the same as status --json: the central server in
  // use and the cache's limit and use.
  const auto api = http_request(http_of(c.peer(1)), "GET", "/api/status?token=" + token_of(c.peer(1)));
  REQUIRE(api.status == 200);
  const auto s = nlohmann::json::parse(api.body);
  const auto json_status = c.status_json(1);
  CHECK(s["central_addr"] == c.central().addr);
  CHECK(s["cache_limit"] == 64 * kMiB);
  CHECK(s["cache_used"].get<std::uint64_t>() >= fs::file_size(src));
  CHECK(s["cache_used"] == json_status["cache_used"]);

  Cluster::kill(c.peer(0));
  REQUIRE(wait_for([&] { return !c.is_live(0); }, 10s));
  const auto out = c.path("out") / "kept.bin";
  const auto r = c.on_peer(3, "request-file", {"--file-id", id, "--out", out.string()}, 60s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  CHECK(files_equal(out, src));
  // The target stays with the file while its owner is away.
  CHECK(file_info(c, id).value("replicas", 0) == 2);
}

TEST_CASE("replicas: a volunteer whose cache cannot hold the file is not asked, one with room is", "[e2e][replicas]") {
  Cluster c(1);
  c.add_peer(true, volunteer(c, "small", "1M"));
  const auto src = c.make_file("big.bin", 3 * kMiB, 42);
  const std::string id = register_with_replicas(c, 0, src, 1);
  // Many heartbeats pass (200 ms each) without the small volunteer touching it.
  CHECK_FALSE(wait_for([&] { return touches(c, 1, id); }, 3s));
  CHECK(live_copies(c, id) == 0);
  c.add_peer(true, volunteer(c, "roomy", "16M"));
  REQUIRE(wait_for([&] { return live_copies(c, id) == 1; }, 30s));
  CHECK(cached_entry(c, 2, id).is_object());
  CHECK_FALSE(touches(c, 1, id));
}

TEST_CASE("replicas: a volunteer killed mid-fetch is replaced by another", "[e2e][replicas]") {
  Cluster c(0);
  // The owner uploads slowly, so the first volunteer is still fetching when it dies.
  c.add_peer(true, {"--upload-limit", "256K"});
  c.add_peer(true, volunteer(c, "first", "64M"));
  const auto src = c.make_file("slow.bin", 2 * kMiB, 43);
  const std::string id = register_with_replicas(c, 0, src, 1);
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) > 0; }, 20s));
  Cluster::kill(c.peer(1));
  c.add_peer(true, volunteer(c, "second", "64M"));
  REQUIRE(wait_for([&] { return live_copies(c, id) == 1; }, 60s));
  const auto entry = cached_entry(c, 2, id);
  REQUIRE(entry.is_object());
  CHECK(files_equal(entry.value("path", ""), src));
}

TEST_CASE("replicas: when the owner withdraws the file, volunteers drop their copies", "[e2e][replicas]") {
  Cluster c(1);
  c.add_peer(true, volunteer(c, "cache", "64M"));
  const auto src = c.make_file("gone.bin", kMiB + 7, 44);
  const std::string id = register_with_replicas(c, 0, src, 1);
  REQUIRE(wait_for([&] { return live_copies(c, id) == 1; }, 30s));
  const fs::path copy = cached_entry(c, 1, id).value("path", "");
  REQUIRE(fs::exists(copy));

  const auto r = c.on_peer(0, "stop-sharing", {"--file-id", id});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  REQUIRE(wait_for([&] { return !touches(c, 1, id); }, 20s));
  CHECK_FALSE(fs::exists(copy));
  CHECK(wait_for([&] { return c.holders(id) <= 0; }, 10s));
}

TEST_CASE("replicas: a full volunteer keeps a copy its target needs, and evicts it once it is spare",
          "[e2e][replicas]") {
  Cluster c(1);
  c.add_peer(true, volunteer(c, "cache", "5M"));  // room for one of the two files
  c.add_peer(true);                               // downloads the first file: a second copy
  const auto first = c.make_file("first.bin", 3 * kMiB, 47);
  const auto second = c.make_file("second.bin", 3 * kMiB, 48);
  const std::string a = register_with_replicas(c, 0, first, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, a).is_object(); }, 30s));
  const std::string b = register_with_replicas(c, 0, second, 1);
  // The only copy of `a` is the volunteer's: it is not evicted for `b`.
  CHECK_FALSE(wait_for([&] { return touches(c, 1, b); }, 3s));
  CHECK(cached_entry(c, 1, a).is_object());
  // Someone else holds `a` now: the volunteer's copy is spare and goes for `b`.
  const auto out = c.path("out") / "first.bin";
  const auto r = c.on_peer(2, "request-file", {"--file-id", a, "--out", out.string()});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, b).is_object(); }, 30s));
  CHECK_FALSE(touches(c, 1, a));
  CHECK(live_copies(c, a) == 1);
  CHECK(live_copies(c, b) == 1);
}

TEST_CASE("replicas: a target past the owner's chunk budget is refused in one line, exit 1", "[e2e][replicas]") {
  ClusterOptions options;
  options.central_args = {"--max-chunks-per-peer", "10"};
  Cluster c(1, options);
  const auto src = c.make_file("budget.bin", 3 * kChunkSize, 46);  // 3 chunks
  // 3 chunks x 4 replicas = 12 > 10.
  check_fails("--replicas 4", c.on_peer(0, "register-file", {"--path", src.string(), "--replicas", "4"}), 1,
              {"replicated chunks"});
  const auto status = c.status_json(0);
  CHECK(status["shared"].empty());
  // 3 x 3 = 9 fits.
  const std::string id = register_with_replicas(c, 0, src, 3);
  REQUIRE(wait_for([&] { return file_info(c, id).value("replicas", 0) == 3; }, 10s));
}

TEST_CASE("replicas: a bad --cache-limit or --replicas is one line and exit 2", "[e2e][replicas]") {
  Cluster c(1);
  const auto bad =
      c.run({"peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0", "--data-dir",
             c.path("bad").string(), "--cache-dir", c.path("bad-cache").string(), "--cache-limit", "12Q"});
  check_fails("--cache-limit 12Q", bad, 2, {"size", "12Q"});
  const auto alone = c.run({"peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0",
                            "--data-dir", c.path("bad").string(), "--cache-limit", "1G"});
  check_fails("--cache-limit alone", alone, 2, {"--cache-dir"});
  const auto src = c.make_file("f.bin", 1000, 45);
  check_fails("--replicas 17", c.on_peer(0, "register-file", {"--path", src.string(), "--replicas", "17"}), 2,
              {"replicas"});
}

// "Used" is fetched (when the fetch ends) or served to a downloader (seen with
// the upload counters, every 5 s): src/peer/server.cpp, make_room.
TEST_CASE("replicas: a full volunteer evicts the least recently used of its spare copies first", "[e2e][replicas]") {
  Cluster c(1);  // 0: the owner
  const auto cache = add_lru_peers(c);
  const auto fa = c.make_file("a.bin", 2 * kMiB, 51);
  const auto fb = c.make_file("b.bin", 2 * kMiB, 52);
  const auto fc = c.make_file("c.bin", 2 * kMiB, 53);
  const std::string a = register_with_replicas(c, 0, fa, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, a).is_object(); }, 30s));
  const std::string b = register_with_replicas(c, 0, fb, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, b).is_object(); }, 30s));
  // Fetched in that order: `a` is the older.
  const auto fetched_a = last_used_ms(c, 1, a);
  REQUIRE(fetched_a > 0);
  REQUIRE(last_used_ms(c, 1, b) > fetched_a);

  // Peer 2 copies both from the owner while the volunteer is down (so the
  // volunteer serves neither): both copies are spare once it is back.
  copy_past_the_volunteer(c, cache, a, b);
  REQUIRE(last_used_ms(c, 1, a) == fetched_a);  // the LRU times outlive a restart

  std::string evicted = a;
  std::string kept = b;
  SECTION("neither served: the one fetched first goes") {}
  SECTION("the older one served since: the other goes") {
    // The volunteer is the only live holder of `a` while peer 3 downloads it.
    REQUIRE(Cluster::stop(c.peer(0)) == 0);
    REQUIRE(Cluster::stop(c.peer(2)) == 0);
    download(c, 3, a, "a.bin");
    REQUIRE(wait_for([&] { return last_used_ms(c, 1, a) > last_used_ms(c, 1, b); }, 15s));
    c.start_peer_with(0, {});
    c.start_peer_with(2, {});
    REQUIRE(wait_for([&] { return c.is_live(2, a) && c.is_live(2, b) && c.is_live(0, a); }, 10s));
    evicted = b;
    kept = a;
  }
  const std::string cid = register_with_replicas(c, 0, fc, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, cid).is_object(); }, 30s));
  CHECK_FALSE(touches(c, 1, evicted));
  CHECK(cached_entry(c, 1, kept).is_object());
  CHECK(live_copies(c, evicted) >= 1);
}

// The upload counters outlive a restart; the LRU time must not take the bytes
// served in an earlier run for a use now, or every copy ever served would
// become the newest at the first tick (5 s) after a restart.
TEST_CASE("replicas: a volunteer's restart does not make a copy served long ago its most recently used",
          "[e2e][replicas]") {
  Cluster c(1);  // 0: the owner
  const auto cache = add_lru_peers(c);
  const auto fx = c.make_file("x.bin", 2 * kMiB, 54);
  const auto fy = c.make_file("y.bin", 2 * kMiB, 55);
  const auto fz = c.make_file("z.bin", 2 * kMiB, 56);
  const std::string x = register_with_replicas(c, 0, fx, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, x).is_object(); }, 30s));
  const auto fetched_x = last_used_ms(c, 1, x);
  // `x` served (the volunteer its only live holder), then `y` fetched: `x` is the older.
  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  download(c, 3, x, "x.bin");
  REQUIRE(wait_for([&] { return last_used_ms(c, 1, x) > fetched_x; }, 15s));
  const auto served_x = last_used_ms(c, 1, x);
  c.start_peer_with(0, {});
  REQUIRE(wait_for([&] { return c.is_live(0, x); }, 10s));
  const std::string y = register_with_replicas(c, 0, fy, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, y).is_object(); }, 30s));
  REQUIRE(last_used_ms(c, 1, y) > served_x);

  // Peer 2 copies both from the owner while the volunteer is down.
  copy_past_the_volunteer(c, cache, x, y);
  // Past the first upload-counter tick (5 s), nothing served since: unchanged.
  CHECK_FALSE(wait_for([&] { return last_used_ms(c, 1, x) != served_x; }, 7s));

  const std::string z = register_with_replicas(c, 0, fz, 1);
  REQUIRE(wait_for([&] { return cached_entry(c, 1, z).is_object(); }, 30s));
  CHECK_FALSE(touches(c, 1, x));
  CHECK(cached_entry(c, 1, y).is_object());
}
