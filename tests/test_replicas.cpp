// The replica planner (replicas.hpp) and the registry's replica target.
#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include <catch2/catch.hpp>

#include "p2pshare/error.hpp"
#include "p2pshare/registry.hpp"
#include "p2pshare/replicas.hpp"
#include "support/temp_dir.hpp"

using p2pshare::Errc;
using p2pshare::FileId;
using p2pshare::Manifest;
using p2pshare::PeerId;
using p2pshare::central::Registry;
using p2pshare::central::ReplicaConfig;
using p2pshare::central::ReplicaFacts;
using p2pshare::central::ReplicaPlanner;
using p2pshare::central::SystemClock;
using p2pshare::test::TempDir;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

PeerId peer(std::uint8_t n) {
  PeerId id;
  id.bytes[0] = n;
  return id;
}

FileId file(std::uint8_t n) {
  FileId id;
  id.bytes[0] = n;
  return id;
}

// What the registry would say: sizes, live complete holders, live peers.
struct World {
  std::map<FileId, std::uint64_t> sizes;
  std::map<FileId, std::set<PeerId>> holders;
  std::set<PeerId> dead;

  ReplicaPlanner::View view() {
    return {[this](const PeerId& p) { return !dead.contains(p); },
            [this](const FileId& f) -> std::optional<ReplicaFacts> {
              auto it = sizes.find(f);
              if (it == sizes.end()) return std::nullopt;
              ReplicaFacts facts;
              facts.size = it->second;
              for (const auto& p : holders[f]) {
                if (!dead.contains(p)) facts.live_complete.push_back(p);
              }
              return facts;
            }};
  }
};

const auto kT0 = ReplicaPlanner::Clock::time_point{} + 1h;

bool contains(const std::vector<FileId>& files, const FileId& f) {
  return std::find(files.begin(), files.end(), f) != files.end();
}

}  // namespace

TEST_CASE("replicas: volunteers with room are asked until the target is met, never twice", "[replicas]") {
  ReplicaPlanner planner;
  World world;
  const PeerId owner = peer(1);
  const FileId f = file(1);
  world.sizes[f] = 10 * kMiB;
  world.holders[f] = {owner};
  CHECK(planner.request(owner, f, 40, 2) == 2u);
  CHECK(planner.request(owner, f, 40, 2) == std::nullopt);  // unchanged
  const PeerId v1 = peer(11), v2 = peer(12), v3 = peer(13);
  for (const auto& v : {v1, v2, v3}) planner.registered(v, 100 * kMiB, 0);

  auto o1 = planner.heartbeat(v1, 0, {}, kT0, world.view());
  REQUIRE(o1);
  CHECK(o1->fetch == std::vector<FileId>{f});
  // Asked already and still fetching: not asked again.
  CHECK(planner.heartbeat(v1, 0, {}, kT0 + 1s, world.view())->fetch.empty());
  CHECK(planner.heartbeat(v2, 0, {}, kT0, world.view())->fetch == std::vector<FileId>{f});
  // Two live copies under way for a target of 2: the third is not asked.
  CHECK(planner.heartbeat(v3, 0, {}, kT0, world.view())->fetch.empty());
  CHECK(planner.fetching(f) == 2);

  // v1 finishes: its fetch ends; the owner is not a copy, v1 is.
  world.holders[f].insert(v1);
  planner.announced(v1, f, true);
  CHECK(planner.fetching(f) == 1);
  CHECK(planner.live_copies(f, *world.view().facts(f)) == 1);
  // Not a volunteer: no orders, an ordinary answer.
  CHECK_FALSE(planner.heartbeat(owner, 0, {}, kT0, world.view()));
}

TEST_CASE("replicas: a volunteer without room is skipped and another takes the file", "[replicas]") {
  ReplicaPlanner planner;
  World world;
  const FileId f = file(2);
  world.sizes[f] = 10 * kMiB;
  world.holders[f] = {peer(1)};
  planner.request(peer(1), f, 40, 1);
  const PeerId small = peer(20), big = peer(21);
  planner.registered(small, 4 * kMiB, 0);
  planner.registered(big, 64 * kMiB, 60 * kMiB);  // full of copies no target needs
  CHECK(planner.heartbeat(small, 0, {}, kT0, world.view())->fetch.empty());
  // big's used space is not evictable (it caches nothing the planner knows):
  CHECK(planner.heartbeat(big, 60 * kMiB, {}, kT0, world.view())->fetch.empty());
  // Once it says it uses less, it has room.
  CHECK(planner.heartbeat(big, 50 * kMiB, {}, kT0, world.view())->fetch == std::vector<FileId>{f});
}

TEST_CASE("replicas: a volunteer that expires or gives up mid-fetch is replaced", "[replicas]") {
  ReplicaConfig config;
  config.fetch_timeout = 10min;
  ReplicaPlanner planner(config);
  World world;
  const FileId f = file(3);
  world.sizes[f] = kMiB;
  world.holders[f] = {peer(1)};
  planner.request(peer(1), f, 4, 1);
  const PeerId a = peer(30), b = peer(31), c = peer(32);
  for (const auto& v : {a, b, c}) planner.registered(v, 10 * kMiB, 0);
  CHECK(planner.heartbeat(a, 0, {}, kT0, world.view())->fetch.size() == 1);
  CHECK(planner.heartbeat(b, 0, {}, kT0, world.view())->fetch.empty());
  world.dead.insert(a);  // killed mid-fetch: its registration expires
  CHECK(planner.heartbeat(b, 0, {}, kT0 + 1s, world.view())->fetch == std::vector<FileId>{f});
  // b gives up: c is asked, and b is not asked again at once.
  CHECK(planner.heartbeat(b, 0, {f}, kT0 + 2s, world.view())->fetch.empty());
  CHECK(planner.heartbeat(c, 0, {}, kT0 + 2s, world.view())->fetch == std::vector<FileId>{f});
  // c never answers: after the timeout its fetch is handed on.
  CHECK(planner.heartbeat(c, 0, {}, kT0 + 11min, world.view())->fetch.empty());
  CHECK(planner.heartbeat(b, 0, {}, kT0 + 11min, world.view())->fetch == std::vector<FileId>{f});
  // A disconnected volunteer's fetch goes at once.
  planner.disconnected(b);
  CHECK(planner.fetching(f) == 0);
}

TEST_CASE("replicas: copies the target needs are kept, spare ones may go, withdrawn ones are dropped", "[replicas]") {
  ReplicaPlanner planner;
  World world;
  const PeerId owner = peer(1);
  const FileId needed = file(4), spare = file(5);
  const PeerId v = peer(40), w = peer(41);
  world.sizes[needed] = kMiB;
  world.sizes[spare] = 2 * kMiB;
  world.holders[needed] = {owner, v};
  world.holders[spare] = {owner, v, w};
  planner.request(owner, needed, 4, 1);
  planner.request(owner, spare, 8, 1);
  planner.registered(v, 3 * kMiB, 3 * kMiB);
  planner.announced(v, needed, true);
  planner.announced(v, spare, true);
  auto orders = planner.heartbeat(v, 3 * kMiB, {}, kT0, world.view());
  REQUIRE(orders);
  CHECK(orders->keep == std::vector<FileId>{needed});
  CHECK(orders->drop.empty());
  // The owner withdraws the file: its target goes to 0 and v is told to drop it.
  CHECK(planner.withdraw(owner, needed) == 0u);
  orders = planner.heartbeat(v, 3 * kMiB, {}, kT0, world.view());
  CHECK(orders->drop == std::vector<FileId>{needed});
  CHECK_FALSE(contains(orders->keep, needed));
  planner.withdraw(v, needed);
  CHECK(planner.heartbeat(v, 2 * kMiB, {}, kT0, world.view())->drop.empty());
}

TEST_CASE("replicas: targets are capped, and count toward the owner's budget", "[replicas]") {
  ReplicaConfig config;
  config.max_chunks_per_owner = 100;
  ReplicaPlanner planner(config);
  const PeerId owner = peer(1);
  CHECK_THROWS_MATCHES(planner.request(owner, file(6), 1, 17), p2pshare::Error,
                       Catch::Predicate<p2pshare::Error>([](const auto& e) { return e.code() == Errc::bad_request; }));
  CHECK(planner.request(owner, file(6), 10, 5) == 5u);  // 50 chunks
  CHECK_THROWS_MATCHES(planner.request(owner, file(7), 10, 6), p2pshare::Error,
                       Catch::Predicate<p2pshare::Error>([](const auto& e) { return e.code() == Errc::limit; }));
  CHECK(planner.target(file(7)) == 0);
  // Lowering a target frees budget; withdrawing frees all of it.
  CHECK(planner.request(owner, file(6), 10, 1) == 1u);
  CHECK(planner.request(owner, file(7), 10, 9) == 9u);
  CHECK(planner.withdraw(owner, file(7)) == 0u);
  CHECK(planner.request(owner, file(8), 10, 9) == 9u);
  // Two owners: the larger target holds until its owner goes.
  const PeerId other = peer(2);
  CHECK(planner.request(other, file(6), 10, 3) == 3u);
  CHECK(planner.withdraw(other, file(6)) == 1u);
}

TEST_CASE("replicas: the registry keeps a file's target across a reopen", "[replicas][registry]") {
  TempDir dir;
  const SystemClock::time_point now(std::chrono::milliseconds(1'700'000'000'000));
  Manifest manifest;
  manifest.chunk_size = 16384;
  manifest.size = 20000;
  manifest.chunk_hashes.resize(2);
  manifest.chunk_hashes[1].bytes[0] = 7;
  const PeerId a = peer(1);
  FileId id;
  {
    Registry registry(dir.path(), 60s);
    registry.upsert_peer(a, "127.0.0.1", 4000, now);
    id = registry.announce(a, manifest, std::nullopt);
    CHECK_FALSE(registry.set_replicas(file(99), 3));
    CHECK(registry.set_replicas(id, 3));
    registry.commit();
  }
  Registry registry(dir.path(), 60s);
  CHECK(registry.file(id, now)->replicas == 3);
  REQUIRE(registry.replica_targets().size() == 1);
  CHECK(registry.replica_targets()[0].second == 3);
  auto facts = registry.replica_facts(id, now);
  REQUIRE(facts);
  CHECK(facts->size == 20000);
  CHECK(facts->live_complete == std::vector<PeerId>{a});
  CHECK(registry.replica_facts(id, now + 61s)->live_complete.empty());
  CHECK(registry.peer_live(a, now));
  CHECK_FALSE(registry.peer_live(a, now + 61s));
}

namespace {

// eviction_order's files as their first bytes (file(n)), readable in a failure.
std::vector<int> order_of(const std::vector<p2pshare::cache::CacheCopy>& copies, bool even_kept) {
  std::vector<int> order;
  for (const auto& id : p2pshare::cache::eviction_order(copies, even_kept)) order.push_back(id.bytes[0]);
  return order;
}

}  // namespace

TEST_CASE("replicas: a volunteer evicts its spare copies least recently used first", "[replicas]") {
  using p2pshare::cache::CacheCopy;
  // Given in no particular order; file ids counter to their times.
  const std::vector<CacheCopy> copies{{file(1), 3000, false}, {file(2), 1000, false}, {file(3), 2000, false}};
  CHECK(order_of(copies, false) == std::vector<int>{2, 3, 1});
  CHECK(order_of(copies, true) == std::vector<int>{2, 3, 1});
  // A copy without a saved time (0) is the oldest; equal times go by file id.
  CHECK(order_of({{file(9), 5, false}, {file(8), 5, false}, {file(7), 0, false}}, false) == std::vector<int>{7, 8, 9});
  CHECK(order_of({}, true).empty());
}

TEST_CASE("replicas: a volunteer evicts a copy its target needs only when over its limit, and last", "[replicas]") {
  using p2pshare::cache::CacheCopy;
  const std::vector<CacheCopy> copies{
      {file(1), 100, true}, {file(2), 4000, false}, {file(3), 50, true}, {file(4), 2000, false}};
  // Kept copies never go for a fetch, however old.
  CHECK(order_of(copies, false) == std::vector<int>{4, 2});
  // Over the limit: every spare copy first, then the kept ones, each least recently used first.
  CHECK(order_of(copies, true) == std::vector<int>{4, 2, 3, 1});
  CHECK(order_of({{file(5), 1, true}}, false).empty());
}
