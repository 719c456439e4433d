#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <initializer_list>
#include <map>
#include <random>
#include <set>
#include <source_location>
#include <vector>

#include "p2pshare/detail/sched_detail.hpp"
#include "p2pshare/sched.hpp"

using p2pshare::Bitfield;
using p2pshare::ChunkIndex;
using p2pshare::sched::Cancel;
using p2pshare::sched::Clock;
using p2pshare::sched::Config;
using p2pshare::sched::PeerKey;
using p2pshare::sched::Scheduler;
namespace detail = p2pshare::sched::detail;
using namespace std::chrono_literals;

namespace {

// Synthetic time: the scheduler never reads a clock, so any origin will do.
const Clock::time_point kStart = Clock::time_point{} + 1h;

Bitfield bits(std::uint32_t size, std::initializer_list<std::uint32_t> set) {
  Bitfield field(size);
  for (std::uint32_t i : set) field.set(ChunkIndex{i});
  return field;
}

std::vector<std::uint32_t> values(const std::vector<ChunkIndex>& chunks) {
  std::vector<std::uint32_t> out;
  for (ChunkIndex chunk : chunks) out.push_back(chunk.value);
  return out;
}

std::set<std::uint32_t> as_set(const std::vector<ChunkIndex>& chunks) {
  auto list = values(chunks);
  return {list.begin(), list.end()};
}

// One request in flight per peer unless a test says otherwise: decisions come
// one at a time and are easy to assert.
Config one_at_a_time() {
  Config config;
  config.min_pipeline = 1;
  config.initial_pipeline = 1;
  return config;
}

}  // namespace

TEST_CASE("sched: rarest chunk first, and only chunks the peer has", "[sched]") {
  Config config = one_at_a_time();
  Scheduler scheduler(6, Bitfield(6), config);
  // Availability: 0,1 -> 3 peers; 2,3,4 -> 2 peers; 5 -> 1 peer.
  REQUIRE(scheduler.add_peer(1, bits(6, {0, 1, 2, 3, 4, 5})));
  REQUIRE(scheduler.add_peer(2, bits(6, {0, 1, 2, 3})));
  REQUIRE(scheduler.add_peer(3, bits(6, {0, 1, 4})));
  CHECK(scheduler.availability(ChunkIndex{0}) == 3);
  CHECK(scheduler.availability(ChunkIndex{4}) == 2);
  CHECK(scheduler.availability(ChunkIndex{5}) == 1);

  CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{5});
  // Peer 3's rarest is 4 (2 holders), ahead of 0 and 1 (3 holders each).
  CHECK(values(scheduler.next_requests(3, kStart)) == std::vector<std::uint32_t>{4});
  // Peer 2 lacks 4 and 5; its rarest remaining are 2 and 3.
  const auto second = values(scheduler.next_requests(2, kStart));
  REQUIRE(second.size() == 1);
  CHECK((second[0] == 2 || second[0] == 3));
  CHECK(scheduler.outstanding(1) == 1);
  CHECK_FALSE(scheduler.in_endgame());

  SECTION("a wider pipeline takes the open chunks in rarity order") {
    Config wide;
    wide.initial_pipeline = 6;
    Scheduler fresh(6, Bitfield(6), wide);
    fresh.add_peer(1, bits(6, {0, 1, 2, 3, 4, 5}));
    fresh.add_peer(2, bits(6, {0, 1, 2, 3}));
    fresh.add_peer(3, bits(6, {0, 1, 4}));
    const auto order = values(fresh.next_requests(1, kStart));
    REQUIRE(order.size() == 6);
    CHECK(order[0] == 5);
    CHECK(std::set<std::uint32_t>(order.begin() + 1, order.begin() + 4) == std::set<std::uint32_t>{2, 3, 4});
    CHECK(std::set<std::uint32_t>(order.begin() + 4, order.end()) == std::set<std::uint32_t>{0, 1});
  }
  SECTION("a peer never gets a chunk it does not have") {
    Config wide;
    wide.initial_pipeline = 6;
    Scheduler fresh(6, Bitfield(6), wide);
    fresh.add_peer(3, bits(6, {0, 1, 4}));
    CHECK(as_set(fresh.next_requests(3, kStart)) == std::set<std::uint32_t>{0, 1, 4});
    CHECK(fresh.next_requests(3, kStart).empty());
  }
}

TEST_CASE("sched: ties are broken by an order seeded per download", "[sched]") {
  auto order_for = [](std::uint64_t seed) {
    Config config;
    config.max_pipeline = 64;
    config.initial_pipeline = 64;
    config.random_seed = seed;
    Scheduler scheduler(64, Bitfield(64), config);
    scheduler.add_peer(7, Bitfield(64, true));
    return values(scheduler.next_requests(7, kStart));
  };
  const auto first = order_for(1);
  REQUIRE(first.size() == 64);
  CHECK(order_for(1) == first);  // deterministic
  CHECK(order_for(2) != first);  // but differs between downloads
  std::vector<std::uint32_t> ascending(64);
  for (std::uint32_t i = 0; i < 64; ++i) ascending[i] = i;
  CHECK(first != ascending);
  auto sorted = first;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == ascending);  // a permutation: each chunk once
}

TEST_CASE("sched: a large file is taken in runs of neighbouring chunks, in a random order of runs", "[sched]") {
  // Disk locality for the downloader, diversity for the swarm.
  auto order_for = [](std::uint64_t seed) {
    Config config;
    config.max_pipeline = 64;
    config.initial_pipeline = 64;
    config.random_seed = seed;
    Scheduler scheduler(4096, Bitfield(4096), config);
    scheduler.add_peer(7, Bitfield(4096, true));
    return values(scheduler.next_requests(7, kStart));
  };
  const auto first = order_for(1);
  REQUIRE(first.size() == 64);
  for (std::size_t run = 0; run < 4; ++run) {
    const std::uint32_t start = first[run * 16];
    CHECK(start % 16 == 0);
    for (std::uint32_t i = 1; i < 16; ++i) CHECK(first[run * 16 + i] == start + i);
  }
  CHECK(first[0] != 0);                // the runs themselves come in random order,
  CHECK(order_for(2)[0] != first[0]);  // different for another download
}

TEST_CASE("sched: resumed chunks are never requested", "[sched]") {
  Config config;
  config.initial_pipeline = 10;
  config.max_pipeline = 10;
  Scheduler scheduler(6, bits(6, {0, 2, 4}), config);
  REQUIRE(scheduler.add_peer(1, Bitfield(6, true)));
  CHECK(as_set(scheduler.next_requests(1, kStart)) == std::set<std::uint32_t>{1, 3, 5});
  CHECK(scheduler.next_requests(1, kStart).empty());

  SECTION("a complete resume asks for nothing") {
    Scheduler done(6, Bitfield(6, true), config);
    done.add_peer(1, Bitfield(6, true));
    CHECK(done.complete());
    CHECK(done.next_requests(1, kStart).empty());
    CHECK_FALSE(done.any_source());
    CHECK_FALSE(done.in_endgame());
  }
}

namespace {

struct DownloadLog {
  std::map<std::uint32_t, int> requests_per_chunk;
  int duplicates = 0;
  int duplicates_outside_endgame = 0;
  int same_peer_twice = 0;
  std::map<std::uint32_t, std::size_t> max_copies;
};

// Three peers with overlapping partial bitfields that together cover the
// file; each delivers its oldest request every step.
DownloadLog simulate_download(unsigned endgame_copies) {
  constexpr std::uint32_t kChunks = 200;
  Config config;
  config.endgame_copies = endgame_copies;
  config.random_seed = 42;
  config.max_pipeline = 8;  // keeps the tail, hence the duplicates, small
  Scheduler scheduler(kChunks, Bitfield(kChunks), config);
  std::map<PeerKey, std::deque<std::uint32_t>> in_flight;
  for (PeerKey peer = 0; peer < 3; ++peer) {
    Bitfield has(kChunks);
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      if ((i + peer) % 3 != 0 || peer == 2) has.set(ChunkIndex{i});
    }
    REQUIRE(scheduler.add_peer(peer, has));
  }
  DownloadLog log;
  std::map<std::uint32_t, std::set<PeerKey>> asked;
  Clock::time_point now = kStart;
  for (int step = 0; step < 10000 && !scheduler.complete(); ++step) {
    now += 10ms;
    for (PeerKey peer = 0; peer < 3; ++peer) {
      const auto picks = scheduler.next_requests(peer, now);
      bool duplicated = false;
      for (ChunkIndex chunk : picks) {
        ++log.requests_per_chunk[chunk.value];
        if (!asked[chunk.value].empty()) {
          ++log.duplicates;
          duplicated = true;
        }
        if (!asked[chunk.value].insert(peer).second) ++log.same_peer_twice;
        log.max_copies[chunk.value] = std::max(log.max_copies[chunk.value], asked[chunk.value].size());
        in_flight[peer].push_back(chunk.value);
      }
      // Checked after the call: the call itself may have used up open_.
      if (duplicated && !scheduler.in_endgame()) ++log.duplicates_outside_endgame;
    }
    for (PeerKey peer = 0; peer < 3; ++peer) {
      if (in_flight[peer].empty()) continue;
      const std::uint32_t chunk = in_flight[peer].front();
      in_flight[peer].pop_front();
      const auto cancels = scheduler.on_chunk_arrived(peer, ChunkIndex{chunk}, now);
      REQUIRE(cancels);
      for (const Cancel& cancel : *cancels) {
        auto& queue = in_flight[cancel.peer];
        queue.erase(std::find(queue.begin(), queue.end(), cancel.chunk.value));
      }
      scheduler.on_chunk_done(ChunkIndex{chunk});
    }
  }
  REQUIRE(scheduler.complete());
  CHECK_FALSE(scheduler.in_endgame());
  CHECK_FALSE(scheduler.any_source());
  return log;
}

}  // namespace

TEST_CASE("sched: a full download requests every chunk once outside endgame", "[sched]") {
  SECTION("without endgame copies, exactly once") {
    const DownloadLog log = simulate_download(1);
    CHECK(log.requests_per_chunk.size() == 200);
    CHECK(std::all_of(log.requests_per_chunk.begin(), log.requests_per_chunk.end(),
                      [](const auto& entry) { return entry.second == 1; }));
    CHECK(log.duplicates == 0);
  }
  SECTION("with endgame copies, duplicates only at the tail") {
    const DownloadLog log = simulate_download(2);
    CHECK(log.requests_per_chunk.size() == 200);
    CHECK(log.duplicates_outside_endgame == 0);
    CHECK(log.same_peer_twice == 0);
    CHECK(
        std::all_of(log.max_copies.begin(), log.max_copies.end(), [](const auto& entry) { return entry.second <= 2; }));
    // The tail is at most the pipelines in flight when it starts, not the file.
    CHECK(log.duplicates > 0);
    CHECK(log.duplicates <= 3 * 8);
  }
}

TEST_CASE("sched: endgame spreads copies, caps them and cancels the rest", "[sched]") {
  Config config;
  config.min_pipeline = 1;
  config.initial_pipeline = 2;
  config.endgame_copies = 2;
  Scheduler scheduler(4, Bitfield(4), config);
  for (PeerKey peer = 1; peer <= 5; ++peer) REQUIRE(scheduler.add_peer(peer, Bitfield(4, true)));

  const auto first = scheduler.next_requests(1, kStart);
  CHECK(first.size() == 2);
  CHECK_FALSE(scheduler.in_endgame());
  const auto second = scheduler.next_requests(2, kStart);
  CHECK(second.size() == 2);
  CHECK(scheduler.in_endgame());
  std::set<std::uint32_t> everything = as_set(first);
  everything.merge(as_set(second));
  CHECK(everything.size() == 4);  // no duplicate before the tail

  // Peer 3 takes two copies; peer 4 must take the other two (fewest requests first).
  const auto third = as_set(scheduler.next_requests(3, kStart));
  const auto fourth = as_set(scheduler.next_requests(4, kStart));
  CHECK(third.size() == 2);
  CHECK(fourth.size() == 2);
  std::set<std::uint32_t> copies = third;
  copies.merge(std::set<std::uint32_t>(fourth));
  CHECK(copies == std::set<std::uint32_t>{0, 1, 2, 3});
  // Every chunk has endgame_copies requests: nothing left for peer 5.
  CHECK(scheduler.next_requests(5, kStart).empty());

  // A copy arrives from peer 1: the other request for it is cancelled.
  const ChunkIndex arrived = first[0];
  const PeerKey duplicate_holder = third.contains(arrived.value) ? 3 : 4;
  const auto cancels = scheduler.on_chunk_arrived(1, arrived, kStart + 100ms);
  REQUIRE(cancels);
  REQUIRE(cancels->size() == 1);
  CHECK((*cancels)[0].peer == duplicate_holder);
  CHECK((*cancels)[0].chunk == arrived);
  CHECK(scheduler.outstanding(duplicate_holder) == 1);
  // The cancelled request is forgotten: its late data is unasked.
  CHECK_FALSE(scheduler.on_chunk_arrived(duplicate_holder, arrived, kStart + 150ms));
  // The arrived chunk is pending, not asked again by anyone.
  CHECK(scheduler.next_requests(5, kStart + 200ms).empty());
  // Peer 1 has room again, but its other chunk is already its own and the
  // remaining two have both copies: nothing, and never the same chunk twice.
  CHECK(scheduler.next_requests(1, kStart + 200ms).empty());

  SECTION("a lost copy frees a slot for another peer") {
    const auto returned = scheduler.remove_peer(2);
    CHECK(as_set(returned) == as_set(second));
    // Those two still have one request each (from peer 3 or 4): peer 5 takes them.
    CHECK(as_set(scheduler.next_requests(5, kStart + 300ms)) == as_set(second));
  }
  SECTION("more copies when configured, still one per peer") {
    Config three = config;
    three.endgame_copies = 3;
    three.initial_pipeline = 1;
    Scheduler single(1, Bitfield(1), three);
    for (PeerKey peer = 1; peer <= 4; ++peer) single.add_peer(peer, Bitfield(1, true));
    CHECK(single.next_requests(1, kStart).size() == 1);
    CHECK(single.next_requests(1, kStart).empty());
    CHECK(single.next_requests(2, kStart).size() == 1);
    CHECK(single.next_requests(3, kStart).size() == 1);
    CHECK(single.next_requests(4, kStart).empty());
    const auto cancels_three = single.on_chunk_arrived(2, ChunkIndex{0}, kStart + 1s);
    REQUIRE(cancels_three);
    CHECK(cancels_three->size() == 2);
  }
}

TEST_CASE("sched: pipeline follows each peer's delivery rate", "[sched]") {
  Config config;  // 256 KiB chunks, 0.25 s in flight, pipeline 2..64, initial 4
  Scheduler scheduler(2000, Bitfield(2000), config);
  const PeerKey fast = 1;
  const PeerKey slow = 2;
  REQUIRE(scheduler.add_peer(fast, Bitfield(2000, true)));
  REQUIRE(scheduler.add_peer(slow, Bitfield(2000, true)));
  CHECK(scheduler.pipeline_target(fast) == 4);
  CHECK(scheduler.pipeline_target(99) == 0);

  // Delivers the oldest request every `gap`, refilling after each arrival.
  auto drive = [&](PeerKey peer, std::deque<ChunkIndex>& queue, Clock::time_point& now, Clock::duration gap,
                   int arrivals) {
    for (int n = 0; n < arrivals; ++n) {
      now += gap;
      REQUIRE_FALSE(queue.empty());
      REQUIRE(scheduler.on_chunk_arrived(peer, queue.front(), now));
      scheduler.on_chunk_done(queue.front());
      queue.pop_front();
      const std::size_t before = scheduler.outstanding(peer);
      const auto picks = scheduler.next_requests(peer, now);
      for (ChunkIndex chunk : picks) queue.push_back(chunk);
      // Filled exactly to the target; a shrunk target drains, it asks nothing.
      if (before < scheduler.pipeline_target(peer)) {
        REQUIRE(scheduler.outstanding(peer) == scheduler.pipeline_target(peer));
      } else {
        REQUIRE(picks.empty());
      }
    }
  };

  std::deque<ChunkIndex> fast_queue;
  std::deque<ChunkIndex> slow_queue;
  for (ChunkIndex chunk : scheduler.next_requests(fast, kStart)) fast_queue.push_back(chunk);
  for (ChunkIndex chunk : scheduler.next_requests(slow, kStart)) slow_queue.push_back(chunk);
  CHECK(fast_queue.size() == 4);  // fills up to the initial target
  CHECK(slow_queue.size() == 4);

  Clock::time_point fast_now = kStart;
  Clock::time_point slow_now = kStart;
  // 256 KiB every 20 ms = 12.5 MiB/s: 3.125 MiB in flight = 12.5 chunks, so 13, plus one.
  drive(fast, fast_queue, fast_now, 20ms, 40);
  // 256 KiB every 5 s ~ 52 KB/s: well under one chunk in flight.
  drive(slow, slow_queue, slow_now, 5s, 5);
  CHECK(scheduler.pipeline_target(fast) == 14);
  CHECK(scheduler.pipeline_target(slow) == config.min_pipeline);
  CHECK(fast_queue.size() == 14);

  SECTION("the target falls when the fast peer slows down") {
    drive(fast, fast_queue, fast_now, 250ms, 30);
    CHECK(scheduler.pipeline_target(fast) < 14);
    CHECK(scheduler.pipeline_target(fast) >= config.min_pipeline);
  }
  SECTION("a very fast peer is capped at max_pipeline") {
    drive(fast, fast_queue, fast_now, 1ms, 400);
    CHECK(scheduler.pipeline_target(fast) == config.max_pipeline);
  }
}

TEST_CASE("sched: a burst with next to no elapsed time does not make up a rate", "[sched]") {
  Scheduler scheduler(8, Bitfield(8), Config{});
  scheduler.add_peer(1, Bitfield(8, true));
  const auto picks = scheduler.next_requests(1, kStart);
  REQUIRE(picks.size() == 4);
  REQUIRE(scheduler.on_chunk_arrived(1, picks[0], kStart));
  for (std::size_t i = 1; i < picks.size(); ++i) {
    REQUIRE(scheduler.on_chunk_arrived(1, picks[i], kStart + std::chrono::microseconds(i)));
  }
  CHECK(scheduler.pipeline_target(1) == 4);  // still the initial guess
  // Arrivals stamped before their request (bad time points) are no crash either.
  const auto more = scheduler.next_requests(1, kStart + 1s);
  REQUIRE_FALSE(more.empty());
  CHECK(scheduler.on_chunk_arrived(1, more[0], kStart));
  CHECK(scheduler.pipeline_target(1) == 4);
}

TEST_CASE("sched: time a peer sits idle with nothing asked does not count", "[sched]") {
  Scheduler scheduler(100, Bitfield(100), Config{});
  scheduler.add_peer(1, Bitfield(100, true));
  Clock::time_point now = kStart;
  for (int round = 0; round < 3; ++round) {
    // Each chunk takes 20 ms (12.5 MiB/s), then we ask nothing for 10 s.
    for (ChunkIndex chunk : scheduler.next_requests(1, now)) {
      now += 20ms;
      REQUIRE(scheduler.on_chunk_arrived(1, chunk, now));
    }
    now += 10s;
  }
  CHECK(scheduler.pipeline_target(1) == 14);
}

TEST_CASE("sched: a peer waits for the whole download's tail before duplicating", "[sched]") {
  Config config;
  config.min_pipeline = 1;
  config.initial_pipeline = 3;
  Scheduler scheduler(3, Bitfield(3), config);
  REQUIRE(scheduler.add_peer(1, bits(3, {0})));
  CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{0});
  scheduler.on_have(1, ChunkIndex{1});
  scheduler.on_have(1, ChunkIndex{2});
  REQUIRE(scheduler.add_peer(2, bits(3, {0})));
  // Peer 2 could only duplicate chunk 0, but chunks 1 and 2 are not asked yet.
  CHECK_FALSE(scheduler.in_endgame());
  CHECK(scheduler.next_requests(2, kStart).empty());
  CHECK(as_set(scheduler.next_requests(1, kStart)) == std::set<std::uint32_t>{1, 2});
  CHECK(scheduler.in_endgame());
  CHECK(values(scheduler.next_requests(2, kStart)) == std::vector<std::uint32_t>{0});
}

TEST_CASE("sched: chunks made rarer by a leaving peer are seen as rarer", "[sched]") {
  // Big enough that the joins and leaves below take the bulk path.
  Config config;
  config.min_pipeline = 300;
  config.initial_pipeline = 300;
  config.max_pipeline = 300;
  Scheduler scheduler(600, Bitfield(600), config);
  Bitfield first_half(600);
  for (std::uint32_t i = 0; i < 300; ++i) first_half.set(ChunkIndex{i});
  scheduler.add_peer(1, Bitfield(600, true));
  scheduler.add_peer(2, first_half);
  scheduler.add_peer(3, first_half);

  // 300..599 are rarest: peer 1 takes exactly those.
  const auto second_half = scheduler.next_requests(1, kStart);
  REQUIRE(second_half.size() == 300);
  CHECK(std::all_of(second_half.begin(), second_half.end(), [](ChunkIndex chunk) { return chunk.value >= 300; }));
  for (ChunkIndex chunk : second_half) {
    REQUIRE(scheduler.on_chunk_arrived(1, chunk, kStart + 1s));
    scheduler.on_chunk_done(chunk);
  }
  // Peers 2 and 3 leave with nothing outstanding: 0..299 drop to one holder,
  // and must not be hidden behind where peer 1's last scan stopped.
  scheduler.remove_peer(2);
  scheduler.remove_peer(3);
  CHECK(scheduler.availability(ChunkIndex{0}) == 1);
  CHECK(scheduler.next_requests(1, kStart + 2s).size() == 300);
}

TEST_CASE("sched: a lost peer's requests go to another peer", "[sched]") {
  Config config;
  config.min_pipeline = 4;  // the slow synthetic deliveries below must not shrink it
  config.initial_pipeline = 4;
  Scheduler scheduler(8, Bitfield(8), config);
  scheduler.add_peer(1, Bitfield(8, true));
  scheduler.add_peer(2, Bitfield(8, true));
  const auto lost = scheduler.next_requests(1, kStart);
  const auto kept = scheduler.next_requests(2, kStart);
  REQUIRE(lost.size() == 4);
  REQUIRE(kept.size() == 4);

  CHECK(as_set(scheduler.remove_peer(1)) == as_set(lost));
  CHECK(scheduler.peer_count() == 1);
  CHECK(scheduler.outstanding(1) == 0);
  CHECK(scheduler.availability(lost[0]) == 1);
  CHECK_FALSE(scheduler.in_endgame());      // the lost chunks are open again
  CHECK(scheduler.remove_peer(1).empty());  // already gone

  for (ChunkIndex chunk : kept) {
    REQUIRE(scheduler.on_chunk_arrived(2, chunk, kStart + 1s));
    scheduler.on_chunk_done(chunk);
  }
  CHECK(as_set(scheduler.next_requests(2, kStart + 1s)) == as_set(lost));
}

TEST_CASE("sched: a rejected chunk goes elsewhere, not back to the rejecter", "[sched]") {
  Scheduler scheduler(4, Bitfield(4), one_at_a_time());
  scheduler.add_peer(1, Bitfield(4, true));
  scheduler.add_peer(2, Bitfield(4, true));
  const auto asked = scheduler.next_requests(1, kStart);
  REQUIRE(asked.size() == 1);
  const ChunkIndex refused = asked[0];

  scheduler.on_rejected(1, refused);
  CHECK(scheduler.outstanding(1) == 0);
  CHECK(scheduler.availability(refused) == 1);
  // Now the rarest chunk, so peer 2 takes it at once.
  CHECK(values(scheduler.next_requests(2, kStart)) == std::vector<std::uint32_t>{refused.value});

  // Peer 1 works through everything else and is never offered it.
  for (int round = 0; round < 4; ++round) {
    const auto picks = scheduler.next_requests(1, kStart + 1s);
    if (picks.empty()) break;
    for (ChunkIndex chunk : picks) {
      CHECK(chunk != refused);
      REQUIRE(scheduler.on_chunk_arrived(1, chunk, kStart + 2s));
      scheduler.on_chunk_done(chunk);
    }
  }
  CHECK(scheduler.have().count() == 3);
  CHECK(scheduler.next_requests(1, kStart + 3s).empty());  // not even in endgame

  // Peer 2 refuses too: nobody holds it now.
  scheduler.on_rejected(2, refused);
  CHECK(scheduler.availability(refused) == 0);
  CHECK_FALSE(scheduler.any_source());
  CHECK(scheduler.next_requests(1, kStart + 3s).empty());
  CHECK(scheduler.next_requests(2, kStart + 3s).empty());

  // Once peer 1 announces it, it may be asked again.
  scheduler.on_have(1, refused);
  CHECK(scheduler.any_source());
  CHECK(values(scheduler.next_requests(1, kStart + 4s)) == std::vector<std::uint32_t>{refused.value});
}

TEST_CASE("sched: a deferred chunk goes elsewhere and returns to the deferring peer after defer_period", "[sched]") {
  Config config = one_at_a_time();
  config.defer_period = 3s;
  Scheduler scheduler(4, Bitfield(4), config);
  const PeerKey seed = 1;
  const PeerKey leecher = 2;
  scheduler.add_peer(seed, Bitfield(4, true));
  const auto asked = scheduler.next_requests(seed, kStart);
  REQUIRE(asked.size() == 1);
  const ChunkIndex busy = asked[0];

  scheduler.on_deferred(seed, busy, kStart);
  CHECK(scheduler.outstanding(seed) == 0);
  // Unlike a reject, the seed still counts as a source: the download must not
  // think it has none while the only other holder is not connected yet.
  CHECK(scheduler.availability(busy) == 1);
  CHECK(scheduler.any_source());
  // The seed is asked for everything else, never for the busy chunk.
  for (int round = 0; round < 3; ++round) {
    const auto picks = scheduler.next_requests(seed, kStart + 1s);
    REQUIRE(picks.size() == 1);
    CHECK(picks[0] != busy);
    REQUIRE(scheduler.on_chunk_arrived(seed, picks[0], kStart + 1s));
    scheduler.on_chunk_done(picks[0]);
  }
  CHECK(scheduler.next_requests(seed, kStart + 2s).empty());  // not even in endgame

  // A peer that has it is asked at once.
  Bitfield has_busy(4);
  has_busy.set(busy);
  scheduler.add_peer(leecher, has_busy);
  const auto from_leecher = scheduler.next_requests(leecher, kStart + 2s);
  CHECK(values(from_leecher) == std::vector<std::uint32_t>{busy.value});
  // If that one goes away, the seed is asked again once the period is over.
  scheduler.remove_peer(leecher);
  CHECK(scheduler.next_requests(seed, kStart + 2900ms).empty());
  CHECK(values(scheduler.next_requests(seed, kStart + 3s)) == std::vector<std::uint32_t>{busy.value});
}

TEST_CASE("sched: bad chunks are strikes, and max_strikes bans the peer", "[sched]") {
  Config config = one_at_a_time();
  config.max_strikes = 3;
  Scheduler scheduler(4, Bitfield(4), config);
  const PeerKey liar = 1;
  const PeerKey honest = 2;
  scheduler.add_peer(liar, Bitfield(4, true));
  scheduler.add_peer(honest, Bitfield(4, true));

  auto deliver_bad = [&](Clock::time_point now) {
    const auto picks = scheduler.next_requests(liar, now);
    REQUIRE(picks.size() == 1);
    REQUIRE(scheduler.on_chunk_arrived(liar, picks[0], now));
    const bool banned = scheduler.on_bad_chunk(liar, picks[0]);
    return std::make_pair(picks[0], banned);
  };

  const auto [first_bad, first_banned] = deliver_bad(kStart);
  CHECK_FALSE(first_banned);
  CHECK(scheduler.strikes(liar) == 1);
  CHECK_FALSE(scheduler.have().test(first_bad));
  CHECK(scheduler.any_source());

  CHECK_FALSE(deliver_bad(kStart + 1s).second);
  CHECK(scheduler.strikes(liar) == 2);

  // Strikes survive a reconnect.
  scheduler.remove_peer(liar);
  REQUIRE(scheduler.add_peer(liar, Bitfield(4, true)));
  CHECK(scheduler.strikes(liar) == 2);
  CHECK_FALSE(scheduler.is_banned(liar));

  // The honest peer holds one request; the third strike bans and drops the liar.
  const auto honest_pick = scheduler.next_requests(honest, kStart + 2s);
  REQUIRE(honest_pick.size() == 1);
  const auto [third_bad, third_banned] = deliver_bad(kStart + 3s);
  CHECK(third_banned);
  CHECK(scheduler.is_banned(liar));
  CHECK(scheduler.strikes(liar) == 3);
  CHECK(scheduler.peer_count() == 1);
  CHECK(scheduler.availability(third_bad) == 1);  // the liar's bits are gone
  CHECK(scheduler.next_requests(liar, kStart + 4s).empty());
  CHECK_FALSE(scheduler.add_peer(liar, Bitfield(4, true)));
  CHECK(scheduler.next_requests(liar, kStart + 5s).empty());
  CHECK_FALSE(scheduler.on_bad_chunk(liar, third_bad));  // banned once, not again
  CHECK(scheduler.strikes(liar) == 3);

  // Every chunk the liar spoiled is still obtainable from the honest peer.
  std::set<std::uint32_t> fetched = as_set(honest_pick);
  REQUIRE(scheduler.on_chunk_arrived(honest, honest_pick[0], kStart + 6s));
  scheduler.on_chunk_done(honest_pick[0]);
  for (int round = 0; round < 8 && !scheduler.complete(); ++round) {
    const auto picks = scheduler.next_requests(honest, kStart + 7s);
    REQUIRE_FALSE(picks.empty());
    for (ChunkIndex chunk : picks) {
      fetched.insert(chunk.value);
      REQUIRE(scheduler.on_chunk_arrived(honest, chunk, kStart + 7s));
      scheduler.on_chunk_done(chunk);
    }
  }
  CHECK(scheduler.complete());
  CHECK(fetched.contains(first_bad.value));
  CHECK(fetched.contains(third_bad.value));
  CHECK(scheduler.strikes(honest) == 0);
}

TEST_CASE("sched: a chunk lost on write is fetched again without a strike", "[sched]") {
  Scheduler scheduler(2, Bitfield(2), one_at_a_time());
  scheduler.add_peer(1, Bitfield(2, true));
  const auto picks = scheduler.next_requests(1, kStart);
  REQUIRE(picks.size() == 1);
  REQUIRE(scheduler.on_chunk_arrived(1, picks[0], kStart + 1s));
  // Pending: arrived but not verified; not asked again meanwhile.
  const auto other = scheduler.next_requests(1, kStart + 1s);
  REQUIRE(other.size() == 1);
  CHECK(other[0] != picks[0]);
  REQUIRE(scheduler.on_chunk_arrived(1, other[0], kStart + 2s));
  CHECK(scheduler.next_requests(1, kStart + 2s).empty());
  CHECK_FALSE(scheduler.any_source());  // what we lack is all pending
  CHECK_FALSE(scheduler.in_endgame());

  scheduler.on_chunk_lost(picks[0]);
  CHECK(scheduler.strikes(1) == 0);
  CHECK(scheduler.any_source());
  CHECK(values(scheduler.next_requests(1, kStart + 3s)) == std::vector<std::uint32_t>{picks[0].value});

  SECTION("even after it was done") {
    scheduler.on_chunk_done(other[0]);
    CHECK(scheduler.have().test(other[0]));
    scheduler.on_chunk_lost(other[0]);
    CHECK_FALSE(scheduler.have().test(other[0]));
    CHECK_FALSE(scheduler.complete());
    REQUIRE(scheduler.on_chunk_arrived(1, picks[0], kStart + 4s));
    CHECK(values(scheduler.next_requests(1, kStart + 4s)) == std::vector<std::uint32_t>{other[0].value});
  }
}

TEST_CASE("sched: stalled peers are those with a request older than the timeout", "[sched]") {
  Config config = one_at_a_time();
  config.request_timeout = 1s;
  Scheduler scheduler(8, Bitfield(8), config);
  scheduler.add_peer(1, Bitfield(8, true));
  scheduler.add_peer(2, Bitfield(8, true));
  scheduler.add_peer(3, Bitfield(8, true));  // never asked: never stalled
  const auto first = scheduler.next_requests(1, kStart);
  REQUIRE(first.size() == 1);
  REQUIRE(scheduler.next_requests(2, kStart + 500ms).size() == 1);

  CHECK(scheduler.stalled_peers(kStart + 1s).empty());
  CHECK(scheduler.stalled_peers(kStart + 1001ms) == std::vector<PeerKey>{1});
  CHECK(scheduler.stalled_peers(kStart + 1600ms) == std::vector<PeerKey>{1, 2});

  // A delivery clears peer 1; a fresh request starts a new clock.
  REQUIRE(scheduler.on_chunk_arrived(1, first[0], kStart + 1700ms));
  CHECK(scheduler.stalled_peers(kStart + 1700ms) == std::vector<PeerKey>{2});
  REQUIRE_FALSE(scheduler.next_requests(1, kStart + 1700ms).empty());
  CHECK(scheduler.stalled_peers(kStart + 2500ms) == std::vector<PeerKey>{2});
  scheduler.remove_peer(2);
  CHECK(scheduler.stalled_peers(kStart + 2800ms) == std::vector<PeerKey>{1});
}

TEST_CASE("sched: bad indexes and wrong sizes are ignored", "[sched]") {
  Config config = one_at_a_time();
  SECTION("peer-supplied values") {
    Scheduler scheduler(10, Bitfield(10), config);
    CHECK_FALSE(scheduler.add_peer(1, Bitfield(9, true)));
    CHECK_FALSE(scheduler.add_peer(1, Bitfield(11, true)));
    CHECK_FALSE(scheduler.add_peer(1, Bitfield()));
    CHECK(scheduler.peer_count() == 0);
    REQUIRE(scheduler.add_peer(1, bits(10, {3})));
    CHECK_FALSE(scheduler.add_peer(1, Bitfield(10, true)));  // already known
    CHECK(scheduler.availability(ChunkIndex{9}) == 0);

    for (std::uint32_t bad : {10u, 11u, 0xffffffffu}) {
      const ChunkIndex chunk{bad};
      scheduler.on_have(1, chunk);
      scheduler.on_rejected(1, chunk);
      CHECK_FALSE(scheduler.on_chunk_arrived(1, chunk, kStart));
      CHECK_FALSE(scheduler.on_bad_chunk(1, chunk));
      scheduler.on_chunk_done(chunk);
      scheduler.on_chunk_lost(chunk);
      CHECK(scheduler.availability(chunk) == 0);
    }
    CHECK(scheduler.strikes(1) == 0);
    CHECK(scheduler.have().count() == 0);
    // Still only chunk 3 to ask of peer 1.
    CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{3});

    // Unknown peers.
    scheduler.on_have(5, ChunkIndex{0});
    scheduler.on_rejected(5, ChunkIndex{3});
    CHECK(scheduler.availability(ChunkIndex{0}) == 0);
    CHECK(scheduler.availability(ChunkIndex{3}) == 1);
    CHECK(scheduler.next_requests(5, kStart).empty());
    CHECK(scheduler.remove_peer(5).empty());
    CHECK(scheduler.outstanding(5) == 0);
  }
  SECTION("a resume bitfield of the wrong size") {
    Scheduler scheduler(4, Bitfield(8, true), config);
    CHECK(scheduler.have().size() == 4);
    CHECK(scheduler.complete());
    Scheduler short_have(4, bits(2, {1}), config);
    CHECK(short_have.have().size() == 4);
    CHECK(short_have.have().count() == 1);
    CHECK(short_have.have().test(ChunkIndex{1}));
  }
  SECTION("an empty file and a nonsense config") {
    Config nonsense;
    nonsense.chunk_size = 0;
    nonsense.min_pipeline = 10;
    nonsense.max_pipeline = 0;
    nonsense.endgame_copies = 0;
    nonsense.pipeline_seconds = -1;
    Scheduler empty(0, Bitfield(0), nonsense);
    CHECK(empty.complete());
    CHECK(empty.add_peer(1, Bitfield(0)));
    CHECK(empty.next_requests(1, kStart).empty());
    CHECK_FALSE(empty.any_source());
    Scheduler tiny(3, Bitfield(3), nonsense);
    tiny.add_peer(1, Bitfield(3, true));
    tiny.add_peer(2, Bitfield(3, true));
    CHECK(tiny.pipeline_target(1) == 1);
    CHECK(tiny.next_requests(1, kStart).size() == 1);
  }
}

TEST_CASE("sched: data nobody asked that peer for is reported as unasked", "[sched]") {
  Scheduler scheduler(4, Bitfield(4), one_at_a_time());
  scheduler.add_peer(1, Bitfield(4, true));
  scheduler.add_peer(2, Bitfield(4, true));
  const auto picks = scheduler.next_requests(1, kStart);
  REQUIRE(picks.size() == 1);
  const ChunkIndex asked = picks[0];
  const ChunkIndex never{(asked.value + 1) % 4};

  CHECK_FALSE(scheduler.on_chunk_arrived(1, never, kStart));  // not requested at all
  CHECK_FALSE(scheduler.on_chunk_arrived(2, asked, kStart));  // requested of someone else
  CHECK_FALSE(scheduler.on_chunk_arrived(9, asked, kStart));  // unknown peer
  CHECK(scheduler.outstanding(1) == 1);
  const auto cancels = scheduler.on_chunk_arrived(1, asked, kStart);
  REQUIRE(cancels);
  CHECK(cancels->empty());
  CHECK_FALSE(scheduler.on_chunk_arrived(1, asked, kStart));  // twice
}

TEST_CASE("sched: any_source turns false when the last holder leaves", "[sched]") {
  Scheduler scheduler(4, bits(4, {0, 1}), one_at_a_time());
  scheduler.add_peer(1, bits(4, {0, 1}));  // only what we already have
  CHECK_FALSE(scheduler.any_source());
  scheduler.add_peer(2, Bitfield(4, true));
  CHECK(scheduler.any_source());
  REQUIRE(scheduler.next_requests(2, kStart).size() == 1);
  CHECK(scheduler.any_source());  // one requested, one open: both held by peer 2

  const auto returned = scheduler.remove_peer(2);
  CHECK(returned.size() == 1);
  CHECK_FALSE(scheduler.any_source());
  CHECK(scheduler.availability(ChunkIndex{2}) == 0);
  CHECK(scheduler.availability(ChunkIndex{0}) == 1);
  CHECK(scheduler.next_requests(1, kStart).empty());

  // A late announcement from the remaining peer restores a source.
  scheduler.on_have(1, ChunkIndex{3});
  CHECK(scheduler.any_source());
  CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{3});
}

namespace {

// A plain model of the policy, checked against the scheduler after random
// operations. Covers what the hand-written cases cannot enumerate: bulk joins
// and leaves (past the rebuild threshold), and scans resumed across changes.
class ModelCheck {
 public:
  static constexpr std::uint32_t kChunks = 600;
  static constexpr unsigned kMaxStrikes = 3;

  explicit ModelCheck(std::uint32_t seed)
      : scheduler_(kChunks, Bitfield(kChunks), config()),
        status_(kChunks, kMissing),
        requesters_(kChunks),
        random_(seed) {}

  void run(int steps) {
    for (int step = 0; step < steps && !scheduler_.complete(); ++step) {
      now_ += std::chrono::milliseconds(pick(1, 40));
      switch (pick(0, 12)) {
        case 0:
          add_peer();
          break;
        case 1:
          remove_peer();
          break;
        case 2:
          on_have();
          break;
        case 3:
        case 4:
        case 5:
        case 6:
          next_requests();
          break;
        case 7:
        case 8:
          for (int n = 0; n < 2; ++n) arrive();
          break;
        case 9:
          for (int n = 0; n < 8; ++n) finish();
          break;
        case 10:
          reject();
          break;
        case 11:
          unasked();
          break;
        default:
          fail_chunk();
          break;
      }
      compare();
      if (failures_ > 0) break;
    }
  }

  bool completed() const { return scheduler_.complete(); }
  std::uint32_t have_count() const { return scheduler_.have().count(); }

  int failures_ = 0;
  unsigned first_failure_line_ = 0;  // of the first failed expect(), for the report
  int picks_checked_ = 0;
  int duplicates_ = 0;
  std::string first_broken_;  // the scheduler's own invariant check, if it failed

 private:
  enum Status { kMissing, kPending, kHave };

  static Config config() {
    Config config;
    config.max_strikes = kMaxStrikes;
    config.random_seed = 3;
    // Roomy pipelines, so that peers have slots to spare when the tail comes.
    config.min_pipeline = 8;
    config.initial_pipeline = 8;
    return config;
  }
  std::uint32_t pick(std::uint32_t low, std::uint32_t high) {
    // Not uniform_int_distribution: its output differs between standard libraries.
    return low + static_cast<std::uint32_t>(random_() % (high - low + 1));
  }
  void expect(bool ok, std::source_location where = std::source_location::current()) {
    if (!ok && failures_++ == 0) first_failure_line_ = where.line();
  }
  unsigned availability(std::uint32_t chunk) const {
    unsigned count = 0;
    for (const auto& [key, has] : has_) count += has[chunk] ? 1 : 0;
    return count;
  }
  bool open(std::uint32_t chunk) const { return status_[chunk] == kMissing && requesters_[chunk].empty(); }
  void drop_peer(PeerKey key) {
    for (auto& peers : requesters_) peers.erase(key);
    has_.erase(key);
  }

  void add_peer() {
    const PeerKey key = pick(0, 9);
    std::vector<bool> has(kChunks);
    const std::uint32_t percent = std::array<std::uint32_t, 4>{100, 50, 8, 0}[pick(0, 3)];
    Bitfield field(kChunks);
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      has[i] = pick(1, 100) <= percent;
      field.set(ChunkIndex{i}, has[i]);
    }
    const bool allowed = !has_.contains(key) && strikes_[key] < kMaxStrikes;
    expect(scheduler_.add_peer(key, field) == allowed);
    if (allowed) has_[key] = has;
  }
  void remove_peer() {
    const PeerKey key = pick(0, 9);
    std::set<std::uint32_t> expected;
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      if (requesters_[i].contains(key)) expected.insert(i);
    }
    expect(as_set(scheduler_.remove_peer(key)) == expected);
    drop_peer(key);
  }
  void on_have() {
    const PeerKey key = pick(0, 9);
    const std::uint32_t chunk = pick(0, kChunks - 1);
    scheduler_.on_have(key, ChunkIndex{chunk});
    if (has_.contains(key)) has_[key][chunk] = true;
  }
  void next_requests() {
    PeerKey key = pick(0, 9);
    if (!has_.empty() && pick(0, 4) != 0) {  // mostly a connected peer: those decide things
      key = std::next(has_.begin(), pick(0, static_cast<std::uint32_t>(has_.size() - 1)))->first;
    }
    const std::size_t target = scheduler_.pipeline_target(key);
    const std::size_t before = scheduler_.outstanding(key);
    const auto picks = scheduler_.next_requests(key, now_);
    if (!has_.contains(key)) return expect(picks.empty());
    const auto& has = has_[key];
    const std::size_t wanted = before < target ? target - before : 0;
    std::vector<std::uint32_t> fresh;
    std::vector<std::uint32_t> copies;
    for (ChunkIndex chunk : picks) {
      const std::uint32_t i = chunk.value;
      expect(has[i] && status_[i] == kMissing && !requesters_[i].contains(key));
      (requesters_[i].empty() ? fresh : copies).push_back(i);
    }
    expect(picks.size() <= wanted);
    // Fresh picks are the rarest open chunks it has; if fewer than wanted, it has no other.
    unsigned rarest_left = ~0u;
    unsigned most_available_open = 0;
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      if (!open(i) || std::find(fresh.begin(), fresh.end(), i) != fresh.end()) continue;
      most_available_open = std::max(most_available_open, availability(i));
      if (has[i]) rarest_left = std::min(rarest_left, availability(i));
    }
    for (std::uint32_t i : fresh) expect(availability(i) <= rarest_left);
    if (picks.size() < wanted) expect(rarest_left == ~0u);
    if (!copies.empty()) {
      // Only at the tail, on chunks below the copy limit, fewest requests first.
      expect(rarest_left == ~0u && most_available_open == 0);
      std::size_t most_copies = 0;
      for (std::uint32_t i : copies) {
        expect(requesters_[i].size() < config().endgame_copies);
        most_copies = std::max(most_copies, requesters_[i].size());
      }
      for (std::uint32_t i = 0; i < kChunks; ++i) {
        const bool eligible =
            status_[i] == kMissing && has[i] && !requesters_[i].empty() && !requesters_[i].contains(key);
        if (eligible && std::find(copies.begin(), copies.end(), i) == copies.end()) {
          expect(requesters_[i].size() >= most_copies);
        }
      }
    }
    picks_checked_ += static_cast<int>(picks.size());
    duplicates_ += static_cast<int>(copies.size());
    for (ChunkIndex chunk : picks) requesters_[chunk.value].insert(key);
  }
  void arrive() {
    std::vector<std::pair<PeerKey, std::uint32_t>> in_flight;
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      for (PeerKey key : requesters_[i]) in_flight.emplace_back(key, i);
    }
    if (in_flight.empty()) return;
    const auto [key, chunk] = in_flight[pick(0, static_cast<std::uint32_t>(in_flight.size() - 1))];
    const auto cancels = scheduler_.on_chunk_arrived(key, ChunkIndex{chunk}, now_);
    expect(cancels.has_value());
    if (!cancels) return;
    std::set<PeerKey> cancelled;
    for (const Cancel& cancel : *cancels) {
      expect(cancel.chunk.value == chunk);
      cancelled.insert(cancel.peer);
    }
    std::set<PeerKey> others = requesters_[chunk];
    others.erase(key);
    expect(cancelled == others);
    requesters_[chunk].clear();
    status_[chunk] = kPending;
    delivered_by_[chunk] = key;
  }
  void finish() {
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      if (status_[i] != kPending) continue;
      scheduler_.on_chunk_done(ChunkIndex{i});
      status_[i] = kHave;
      return;
    }
  }
  void fail_chunk() {
    for (std::uint32_t i = pick(0, kChunks - 1), seen = 0; seen < kChunks; ++seen, i = (i + 1) % kChunks) {
      if (status_[i] != kPending) continue;
      // Only peers 7 to 9 lie, so that the swarm is not all banned halfway.
      if (delivered_by_[i] < 7 || pick(0, 1) == 0) {
        scheduler_.on_chunk_lost(ChunkIndex{i});
      } else {
        const PeerKey key = delivered_by_[i];
        // Counting stops at the ban; a banned peer's late bad chunk changes nothing.
        const bool banned = strikes_[key] < kMaxStrikes && ++strikes_[key] == kMaxStrikes;
        expect(scheduler_.on_bad_chunk(key, ChunkIndex{i}) == banned);
        if (banned) drop_peer(key);
      }
      status_[i] = kMissing;
      return;
    }
  }
  void reject() {
    const PeerKey key = pick(0, 9);
    const std::uint32_t chunk = pick(0, kChunks - 1);
    scheduler_.on_rejected(key, ChunkIndex{chunk});
    if (!has_.contains(key)) return;
    requesters_[chunk].erase(key);
    has_[key][chunk] = false;
  }
  void unasked() {
    const PeerKey key = pick(0, 9);
    const std::uint32_t chunk = pick(0, kChunks - 1);
    if (requesters_[chunk].contains(key)) return;
    expect(!scheduler_.on_chunk_arrived(key, ChunkIndex{chunk}, now_));
  }

  void compare() {
    bool any_source = false;
    bool any_open = false;
    bool any_missing = false;
    for (std::uint32_t i = 0; i < kChunks; ++i) {
      const unsigned count = availability(i);
      expect(scheduler_.availability(ChunkIndex{i}) == count);
      expect(scheduler_.have().test(ChunkIndex{i}) == (status_[i] == kHave));
      any_source = any_source || (status_[i] == kMissing && count > 0);
      any_open = any_open || open(i);
      any_missing = any_missing || status_[i] == kMissing;
    }
    expect(scheduler_.any_source() == any_source);
    expect(scheduler_.in_endgame() == (!any_open && any_missing));
    expect(scheduler_.peer_count() == has_.size());
    for (PeerKey key = 0; key < 10; ++key) {
      std::size_t outstanding = 0;
      for (const auto& peers : requesters_) outstanding += peers.count(key);
      expect(scheduler_.outstanding(key) == outstanding);
      expect(scheduler_.strikes(key) == strikes_[key]);
    }
    const auto broken = scheduler_.check_invariants();
    expect(!broken);
    if (broken && first_broken_.empty()) first_broken_ = *broken;
  }

  Scheduler scheduler_;
  std::vector<Status> status_;
  std::vector<std::set<PeerKey>> requesters_;
  std::map<PeerKey, std::vector<bool>> has_;
  std::map<PeerKey, unsigned> strikes_;
  std::map<std::uint32_t, PeerKey> delivered_by_;
  std::mt19937 random_;
  Clock::time_point now_ = kStart;
};

}  // namespace

TEST_CASE("sched: random operations agree with a plain model of the policy", "[sched]") {
  int duplicates = 0;
  for (std::uint32_t seed : {1u, 2u, 3u}) {
    ModelCheck check(seed);
    check.run(4000);
    INFO("seed " << seed << ": first failure at line " << check.first_failure_line_ << ", have " << check.have_count()
                 << ", picks " << check.picks_checked_ << ", invariant: " << check.first_broken_);
    CHECK(check.failures_ == 0);
    CHECK(check.completed());
    CHECK(check.picks_checked_ > 600);  // the run really exercised the picker
    duplicates += check.duplicates_;
  }
  CHECK(duplicates > 0);  // ... and the endgame
}

TEST_CASE("sched: the invariant check names a count that disagrees", "[sched]") {
  // The bookkeeping, corrupted on purpose the way a bug would: each check
  // must notice its own kind of damage.
  auto fresh = [] {
    detail::Core core(8, Bitfield(8), Config{});
    REQUIRE(core.add_peer(1, bits(8, {0, 1, 2, 3})));
    REQUIRE(core.add_peer(2, bits(8, {2, 3, 4})));
    REQUIRE(core.next_requests(1, kStart, 2).size() == 2);
    REQUIRE_FALSE(core.check_invariants());
    return core;
  };
  SECTION("availability that is not the sum of the peers' bitfields") {
    auto core = fresh();
    ++core.chunks_[5].availability;
    const auto broken = core.check_invariants();
    REQUIRE(broken);
    CHECK(broken->find("availability") != std::string::npos);
  }
  SECTION("a request a peer holds that its chunk does not know of") {
    auto core = fresh();
    core.peers_.at(2).outstanding[ChunkIndex{4}] = kStart;
    const auto broken = core.check_invariants();
    REQUIRE(broken);
    CHECK(broken->find("requesters") != std::string::npos);
  }
  SECTION("a chunk that left its pool") {
    auto core = fresh();
    core.open_.clear();
    const auto broken = core.check_invariants();
    REQUIRE(broken);
    CHECK(broken->find("pool") != std::string::npos);
  }
  SECTION("a have bit without the chunk's status") {
    auto core = fresh();
    core.have_.set(ChunkIndex{7});
    REQUIRE(core.check_invariants());
  }
}

TEST_CASE("sched: a priority window is taken in order, and an exclusive one alone", "[sched]") {
  using p2pshare::sched::Window;
  Config wide;
  wide.min_pipeline = 4;
  wide.initial_pipeline = 4;
  wide.max_pipeline = 4;
  const std::uint32_t n = 20;
  Bitfield all(n);
  for (std::uint32_t i = 0; i < n; ++i) all.set(ChunkIndex{i});

  SECTION("exclusive: nothing outside the window, and it moves on") {
    Scheduler scheduler(n, Bitfield(n), wide);
    REQUIRE(scheduler.add_peer(1, all));
    scheduler.set_window(Window{ChunkIndex{4}, 3, true});
    CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{4, 5, 6});
    // The window is all asked for: a reader that stops stops the download.
    CHECK(scheduler.next_requests(1, kStart).empty());
    REQUIRE(scheduler.on_chunk_arrived(1, ChunkIndex{4}, kStart + 10ms));
    scheduler.on_chunk_done(ChunkIndex{4});
    scheduler.set_window(Window{ChunkIndex{5}, 3, true});
    CHECK(values(scheduler.next_requests(1, kStart + 10ms)) == std::vector<std::uint32_t>{7});
  }
  SECTION("a chunk the peer lacks or already asked is skipped, in order after it") {
    Scheduler scheduler(n, Bitfield(n), wide);
    REQUIRE(scheduler.add_peer(1, bits(n, {0, 2, 3, 9})));
    REQUIRE(scheduler.add_peer(2, all));
    scheduler.set_window(Window{ChunkIndex{0}, 4, true});
    CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{0, 2, 3});
    CHECK(values(scheduler.next_requests(2, kStart)) == std::vector<std::uint32_t>{1});
  }
  SECTION("not exclusive (--sequential): the window first, then the usual rarest first") {
    Scheduler scheduler(n, Bitfield(n), wide);
    REQUIRE(scheduler.add_peer(1, all));
    REQUIRE(scheduler.add_peer(2, bits(n, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17})));
    scheduler.set_window(Window{ChunkIndex{0}, 2, false});
    const auto picks = values(scheduler.next_requests(1, kStart));
    REQUIRE(picks.size() == 4);
    CHECK(picks[0] == 0);
    CHECK(picks[1] == 1);
    // Chunks 18 and 19 have one holder: rarest.
    CHECK(std::set<std::uint32_t>(picks.begin() + 2, picks.end()) == std::set<std::uint32_t>{18, 19});
  }
  SECTION("cleared: back to rarest first over the whole file") {
    Scheduler scheduler(n, Bitfield(n), wide);
    REQUIRE(scheduler.add_peer(1, all));
    scheduler.set_window(Window{ChunkIndex{0}, 1, true});
    CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{0});
    scheduler.set_window(std::nullopt);
    CHECK(scheduler.next_requests(1, kStart).size() == 3);
  }
  SECTION("an exclusive window at the tail gets its endgame copies") {
    Scheduler scheduler(4, Bitfield(4), wide);
    Bitfield four(4);
    for (std::uint32_t i = 0; i < 4; ++i) four.set(ChunkIndex{i});
    REQUIRE(scheduler.add_peer(1, four));
    REQUIRE(scheduler.add_peer(2, four));
    scheduler.set_window(Window{ChunkIndex{2}, 8, true});
    CHECK(values(scheduler.next_requests(1, kStart)) == std::vector<std::uint32_t>{2, 3});
    // 0 and 1 lie outside the window: no endgame yet for peer 2.
    CHECK(scheduler.next_requests(2, kStart).empty());
  }
}

static Bitfield all_chunks(std::uint32_t size) {
  Bitfield field(size);
  for (std::uint32_t i = 0; i < size; ++i) field.set(ChunkIndex{i});
  return field;
}

TEST_CASE("sched: the priority window is asked for first, in order, then rarest first", "[sched]") {
  Config wide;
  wide.initial_pipeline = 4;
  Scheduler scheduler(20, bits(20, {11}), wide);
  REQUIRE(scheduler.add_peer(1, all_chunks(20)));
  REQUIRE(scheduler.add_peer(2, bits(20, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13})));
  // A reader wants bytes from chunk 10 on: 10, 12, 13 (11 is had), in order.
  scheduler.set_window(p2pshare::sched::Window{ChunkIndex{10}, 4, false});
  const auto first = values(scheduler.next_requests(1, kStart));
  REQUIRE(first.size() == 4);
  CHECK(std::vector<std::uint32_t>(first.begin(), first.begin() + 3) == std::vector<std::uint32_t>{10, 12, 13});
  // The fourth comes from rarest first: a chunk only peer 1 has (14..19).
  CHECK(first[3] >= 14);
  // The window is taken: peer 2 gets rarest-first picks among what it has.
  for (auto chunk : values(scheduler.next_requests(2, kStart))) CHECK(chunk < 10);

  SECTION("without a window nothing changes: rarest first") {
    Scheduler plain(20, bits(20, {11}), wide);
    plain.add_peer(1, all_chunks(20));
    plain.add_peer(2, bits(20, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13}));
    for (auto chunk : values(plain.next_requests(1, kStart))) CHECK((chunk >= 10 && chunk != 11 && chunk != 13));
  }
  SECTION("a window past the end is clamped") {
    Scheduler clamped(20, Bitfield(20), wide);
    clamped.add_peer(1, all_chunks(20));
    clamped.set_window(p2pshare::sched::Window{ChunkIndex{18}, 382, false});
    const auto picks = values(clamped.next_requests(1, kStart));
    REQUIRE(picks.size() == 4);
    CHECK(std::vector<std::uint32_t>(picks.begin(), picks.begin() + 2) == std::vector<std::uint32_t>{18, 19});
  }
}
