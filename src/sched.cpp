#include "p2pshare/sched.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include <fmt/format.h>

#include "p2pshare/detail/sched_detail.hpp"

namespace p2pshare::sched {
namespace {

#ifdef P2PSHARE_INVARIANTS
constexpr bool kCheckInvariants = true;
#else
constexpr bool kCheckInvariants = false;
#endif

// A rate sample spans at least this much busy time: chunks drained from one
// socket buffer arrive within microseconds and would otherwise read as an
// absurd rate (or a division by zero).
constexpr Clock::duration kMinRateWindow = std::chrono::milliseconds(50);
// Weight of a new sample in the moving average: follows a real change within
// a few samples, while one slow chunk does not collapse a fast peer's pipeline.
constexpr double kRateSmoothing = 0.3;
// From this many bit changes on (a peer with much of the file joining or
// leaving), one rebuild of open_ from a sorted vector beats a tree erase and
// insert per chunk by an order of magnitude.
constexpr std::uint32_t kBulkBits = 256;

// splitmix64 rather than std::uniform_int_distribution, whose output differs
// between standard libraries: the same seed gives the same order everywhere.
std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The caller builds Config from user settings: nonsense must not divide by
// zero or make std::clamp's bounds cross.
Config sanitized(Config config) {
  config.chunk_size = std::max<std::uint32_t>(config.chunk_size, 1);
  config.max_strikes = std::max(config.max_strikes, 1u);
  config.max_pipeline = std::max(config.max_pipeline, 1u);
  config.min_pipeline = std::clamp(config.min_pipeline, 1u, config.max_pipeline);
  config.initial_pipeline = std::clamp(config.initial_pipeline, config.min_pipeline, config.max_pipeline);
  if (!(config.pipeline_seconds >= 0)) config.pipeline_seconds = 0;  // also catches NaN
  config.endgame_copies = std::max(config.endgame_copies, 1u);
  return config;
}

constexpr std::uint32_t kExtentChunks = 16;

}  // namespace

namespace detail {

Core::Core(std::uint32_t chunk_count, const Bitfield& have, Config config)
    : chunk_count_(chunk_count), have_(chunk_count), config_(sanitized(config)), chunks_(chunk_count) {
  // Ties among equally rare chunks go in a random order of extents of
  // consecutive chunks: downloaders of one file spread over different parts
  // of it (the swarm stays diverse), while each writes runs of neighbouring
  // chunks (the disk sees few, long extents; libtorrent's piece extent
  // affinity makes the same trade). Small files shuffle single chunks.
  const std::uint32_t extent = chunk_count >= kExtentChunks * 64 ? kExtentChunks : 1;
  const std::uint32_t extents = (chunk_count + extent - 1) / extent;
  std::vector<std::uint32_t> order(extents);
  std::iota(order.begin(), order.end(), 0u);
  std::uint64_t state = config_.random_seed;
  for (std::uint32_t i = extents; i > 1; --i) {
    const auto j = static_cast<std::uint32_t>(splitmix64(state) % i);
    std::swap(order[i - 1], order[j]);
  }
  std::vector<std::uint32_t> permutation(chunk_count);
  std::uint32_t rank = 0;
  for (std::uint32_t e : order) {
    for (std::uint32_t i = e * extent; i < std::min(chunk_count, (e + 1) * extent); ++i) permutation[i] = rank++;
  }
  by_tiebreak_.resize(chunk_count);
  for (std::uint32_t i = 0; i < chunk_count; ++i) {
    chunks_[i].tiebreak = permutation[i];
    by_tiebreak_[permutation[i]] = ChunkIndex{i};
    // A `have` of the wrong size is trusted only as far as it goes.
    if (have.test(ChunkIndex{i})) {
      have_.set(ChunkIndex{i});
      chunks_[i].status = ChunkStatus::kHave;
    }
  }
  rebuild_open();
}

// --- pools -------------------------------------------------------------------

void Core::unfile(ChunkIndex index) {
  const ChunkState& chunk = chunks_[index.value];
  if (chunk.status != ChunkStatus::kMissing) return;
  if (chunk.requesters.empty()) {
    open_.erase(PoolKey{chunk.availability, chunk.tiebreak, index.value});
  } else {
    const auto copies = static_cast<std::uint32_t>(chunk.requesters.size());
    requested_.erase(PoolKey{copies, chunk.tiebreak, index.value});
  }
}

void Core::refile(ChunkIndex index, bool moved_later) {
  const ChunkState& chunk = chunks_[index.value];
  if (chunk.status != ChunkStatus::kMissing) return;
  if (chunk.requesters.empty()) {
    open_.insert(PoolKey{chunk.availability, chunk.tiebreak, index.value});
    if (!moved_later) ++open_epoch_;
  } else {
    const auto copies = static_cast<std::uint32_t>(chunk.requesters.size());
    requested_.insert(PoolKey{copies, chunk.tiebreak, index.value});
  }
}

void Core::add_request(PeerKey key, PeerState& peer, ChunkIndex index, Clock::time_point now) {
  unfile(index);
  chunks_[index.value].requesters.push_back(key);
  refile(index);
  peer.outstanding[index] = now;
}

void Core::drop_request(PeerKey key, PeerState& peer, ChunkIndex index) {
  peer.outstanding.erase(index);
  unfile(index);
  std::erase(chunks_[index.value].requesters, key);
  refile(index);
}

void Core::set_peer_bit(PeerState& peer, ChunkIndex index, bool value) {
  if (peer.has.test(index) == value) return;
  peer.has.set(index, value);
  // A new bit may lie before where this peer's last scan stopped.
  peer.scan_from.reset();
  unfile(index);
  if (value) {
    ++chunks_[index.value].availability;
  } else {
    --chunks_[index.value].availability;
  }
  refile(index, /*moved_later=*/value);
}

void Core::set_peer_bits(PeerState& peer, const Bitfield& bits, bool value) {
  if (bits.count() < kBulkBits) {
    for (std::uint32_t i = 0; i < chunk_count_; ++i) {
      if (bits.test(ChunkIndex{i})) set_peer_bit(peer, ChunkIndex{i}, value);
    }
    return;
  }
  for (std::uint32_t i = 0; i < chunk_count_; ++i) {
    if (!bits.test(ChunkIndex{i}) || peer.has.test(ChunkIndex{i}) == value) continue;
    peer.has.set(ChunkIndex{i}, value);
    if (value) {
      ++chunks_[i].availability;
    } else {
      --chunks_[i].availability;
    }
  }
  peer.scan_from.reset();
  if (!value) ++open_epoch_;  // chunks moved earlier in open_
  rebuild_open();
}

// Keys are unique and tiebreaks are a permutation, so walking the chunks in
// tiebreak order and bucketing them by availability sorts them in linear time.
void Core::rebuild_open() {
  auto is_open = [this](const ChunkState& chunk) {
    return chunk.status == ChunkStatus::kMissing && chunk.requesters.empty();
  };
  std::vector<std::size_t> bucket_start(1, 0);  // [a + 1]: open chunks of availability a
  for (const ChunkState& chunk : chunks_) {
    if (!is_open(chunk)) continue;
    if (bucket_start.size() < chunk.availability + 2) bucket_start.resize(chunk.availability + 2);
    ++bucket_start[chunk.availability + 1];
  }
  std::partial_sum(bucket_start.begin(), bucket_start.end(), bucket_start.begin());
  std::vector<PoolKey> keys(bucket_start.back());
  for (ChunkIndex index : by_tiebreak_) {
    const ChunkState& chunk = chunks_[index.value];
    if (is_open(chunk)) {
      keys[bucket_start[chunk.availability]++] = PoolKey{chunk.availability, chunk.tiebreak, index.value};
    }
  }
  open_ = std::set<PoolKey>(keys.begin(), keys.end());  // linear for sorted input
}

// Duplicates cost bandwidth, so they wait for the tail: every missing chunk
// that some connected peer has is already requested. Chunks nobody has do
// not hold the endgame back, or one lost chunk would stall the rest.
bool Core::endgame_allowed() const {
  return open_.empty() || open_.rbegin()->primary == 0;
}

// --- peers -------------------------------------------------------------------

bool Core::add_peer(PeerKey peer, const Bitfield& has) {
  if (is_banned(peer) || peers_.contains(peer) || has.size() != chunk_count_) return false;
  PeerState& state = peers_[peer];
  state.has = Bitfield(chunk_count_);
  set_peer_bits(state, has, true);
  return true;
}

void Core::on_have(PeerKey peer, ChunkIndex chunk) {
  if (chunk.value >= chunk_count_) return;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return;
  set_peer_bit(found->second, chunk, true);
}

std::vector<ChunkIndex> Core::remove_peer(PeerKey peer) {
  std::vector<ChunkIndex> returned;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return returned;
  PeerState& state = found->second;
  while (!state.outstanding.empty()) {
    const ChunkIndex index = state.outstanding.begin()->first;
    returned.push_back(index);
    drop_request(peer, state, index);
  }
  const Bitfield had = state.has;
  set_peer_bits(state, had, false);
  peers_.erase(found);
  return returned;
}

// --- decisions ---------------------------------------------------------------

std::size_t Core::total_outstanding() const {
  std::size_t total = 0;
  for (const auto& [key, state] : peers_) total += state.outstanding.size();
  return total;
}

std::vector<ChunkIndex> Core::next_requests(PeerKey peer, Clock::time_point now, std::size_t limit) {
  std::vector<ChunkIndex> picks;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return picks;
  PeerState& state = found->second;
  // Deferrals that ran out: those chunks may sit before scan_from now.
  for (auto d = state.deferred.begin(); d != state.deferred.end();) {
    if (d->second <= now) {
      d = state.deferred.erase(d);
      state.scan_from.reset();
    } else {
      ++d;
    }
  }
  const std::size_t target = target_for(state);
  if (state.outstanding.size() >= target || limit == 0) return picks;
  const std::size_t wanted = std::min(target - state.outstanding.size(), limit);

  // The priority window first, in order: someone is waiting on those bytes.
  std::vector<ChunkIndex> urgent;
  while (priority_first_ < priority_end_ && chunks_[priority_first_].status == ChunkStatus::kHave) ++priority_first_;
  for (std::uint32_t index = priority_first_; index < priority_end_ && urgent.size() < wanted; ++index) {
    const ChunkIndex chunk{index};
    const ChunkState& entry = chunks_[index];
    if (entry.status != ChunkStatus::kMissing || !entry.requesters.empty()) continue;
    if (!state.has.test(chunk) || state.deferred.contains(chunk)) continue;
    urgent.push_back(chunk);
  }
  for (ChunkIndex chunk : urgent) add_request(peer, state, chunk, now);
  if (urgent.size() == wanted) return urgent;
  picks = std::move(urgent);
  const std::size_t first_rarest = picks.size();

  // Rarest first. A seed matches the first entry; a peer lacking the rarest
  // chunks skips them, but only once until open_ changes under it.
  // Collected first because requesting moves a chunk out of open_.
  auto it = open_.begin();
  if (state.scan_from && state.scan_epoch == open_epoch_) it = open_.lower_bound(*state.scan_from);
  PoolKey last_pick{};
  for (; it != open_.end() && picks.size() < wanted; ++it) {
    if (!state.has.test(ChunkIndex{it->index}) || state.deferred.contains(ChunkIndex{it->index})) continue;
    picks.push_back(ChunkIndex{it->index});
    last_pick = *it;
  }
  // Short of picks means it has nothing left in open_: the next scan starts at the end.
  state.scan_from = picks.size() == wanted ? last_pick : PoolKey{~0u, ~0u, ~0u};
  for (std::size_t i = first_rarest; i < picks.size(); ++i) add_request(peer, state, picks[i], now);
  state.scan_epoch = open_epoch_;
  if (picks.size() == wanted || !endgame_allowed()) return picks;

  // Endgame: the chunks with the fewest requests first, so the copies spread
  // over the whole tail; never a second request to the same peer.
  const std::size_t first_copy = picks.size();
  for (const PoolKey& entry : requested_) {
    if (entry.primary >= config_.endgame_copies || picks.size() == wanted) break;
    const ChunkIndex chunk{entry.index};
    if (!state.has.test(chunk) || state.outstanding.contains(chunk) || state.deferred.contains(chunk)) {
      continue;
    }
    picks.push_back(chunk);
  }
  for (std::size_t i = first_copy; i < picks.size(); ++i) {
    add_request(peer, state, picks[i], now);
  }
  return picks;
}

void Core::prioritize(ChunkIndex first, ChunkIndex end) {
  priority_first_ = std::min(first.value, chunk_count_);
  priority_end_ = std::clamp(end.value, priority_first_, chunk_count_);
}

std::vector<PeerKey> Core::stalled_peers(Clock::time_point now) const {
  std::vector<PeerKey> stalled;
  for (const auto& [key, state] : peers_) {
    if (state.outstanding.empty()) continue;
    Clock::time_point oldest = state.outstanding.begin()->second;
    for (const auto& [index, requested_at] : state.outstanding) {
      oldest = std::min(oldest, requested_at);
    }
    if (now - oldest > config_.request_timeout) stalled.push_back(key);
  }
  // unordered_map order is arbitrary; a sorted answer keeps callers and logs deterministic.
  std::sort(stalled.begin(), stalled.end());
  return stalled;
}

// --- outcomes ----------------------------------------------------------------

void Core::record_delivery(PeerState& peer, Clock::time_point requested_at, Clock::time_point now) {
  // The peer has been working on this chunk since the later of its request
  // and the previous delivery: time it sat idle with nothing asked of it must
  // not count against its rate.
  Clock::time_point start = requested_at;
  if (peer.last_arrival && *peer.last_arrival > start) start = *peer.last_arrival;
  if (now > start) peer.window_busy += now - start;
  peer.window_bytes += config_.chunk_size;
  if (!peer.last_arrival || now > *peer.last_arrival) peer.last_arrival = now;
  if (peer.window_busy < kMinRateWindow) return;

  const double seconds = std::chrono::duration<double>(peer.window_busy).count();
  const double sample = static_cast<double>(peer.window_bytes) / seconds;
  peer.rate = peer.rate_known ? peer.rate + kRateSmoothing * (sample - peer.rate) : sample;
  peer.rate_known = true;
  peer.window_bytes = 0;
  peer.window_busy = Clock::duration::zero();
}

unsigned Core::target_for(const PeerState& peer) const {
  if (!peer.rate_known) return config_.initial_pipeline;
  // Enough in flight to cover pipeline_seconds of its rate, plus one so that
  // the peer is never idle while our next request crosses the wire.
  const double in_flight = peer.rate * config_.pipeline_seconds / config_.chunk_size;
  const double wanted = std::ceil(in_flight) + 1;
  // Clamped as a double: a huge rate must not overflow the conversion.
  return static_cast<unsigned>(
      std::clamp(wanted, static_cast<double>(config_.min_pipeline), static_cast<double>(config_.max_pipeline)));
}

std::optional<std::vector<Cancel>> Core::on_chunk_arrived(PeerKey peer, ChunkIndex chunk, Clock::time_point now) {
  if (chunk.value >= chunk_count_) return std::nullopt;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return std::nullopt;
  PeerState& state = found->second;
  auto request = state.outstanding.find(chunk);
  if (request == state.outstanding.end()) return std::nullopt;
  record_delivery(state, request->second, now);
  state.outstanding.erase(request);

  std::vector<Cancel> cancels;
  ChunkState& arrived = chunks_[chunk.value];
  unfile(chunk);
  for (PeerKey other : arrived.requesters) {
    if (other == peer) continue;
    cancels.push_back(Cancel{other, chunk});
    if (auto holder = peers_.find(other); holder != peers_.end()) {
      holder->second.outstanding.erase(chunk);
    }
  }
  arrived.requesters.clear();
  if (arrived.status == ChunkStatus::kMissing) arrived.status = ChunkStatus::kPending;
  return cancels;
}

void Core::on_chunk_done(ChunkIndex chunk) {
  if (chunk.value >= chunk_count_) return;
  // Requests still recorded (done through some other path while asked for)
  // stay with their peers: the data is on its way and must not look unasked.
  unfile(chunk);
  chunks_[chunk.value].status = ChunkStatus::kHave;
  have_.set(chunk);
}

bool Core::on_bad_chunk(PeerKey peer, ChunkIndex chunk) {
  if (chunk.value >= chunk_count_) return false;
  // A bad copy of a chunk we already verified does not undo it.
  if (chunks_[chunk.value].status == ChunkStatus::kPending) {
    chunks_[chunk.value].status = ChunkStatus::kMissing;
    refile(chunk);
  }
  unsigned& count = strikes_[peer];
  if (count >= config_.max_strikes) return false;  // already banned
  ++count;
  if (count < config_.max_strikes) return false;
  remove_peer(peer);
  return true;
}

void Core::on_chunk_lost(ChunkIndex chunk) {
  if (chunk.value >= chunk_count_) return;
  ChunkState& state = chunks_[chunk.value];
  if (state.status == ChunkStatus::kMissing) return;
  state.status = ChunkStatus::kMissing;
  have_.set(chunk, false);
  refile(chunk);
}

void Core::on_rejected(PeerKey peer, ChunkIndex chunk) {
  if (chunk.value >= chunk_count_) return;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return;
  PeerState& state = found->second;
  if (state.outstanding.contains(chunk)) drop_request(peer, state, chunk);
  set_peer_bit(state, chunk, false);
}

void Core::on_deferred(PeerKey peer, ChunkIndex chunk, Clock::time_point now) {
  if (chunk.value >= chunk_count_) return;
  auto found = peers_.find(peer);
  if (found == peers_.end()) return;
  PeerState& state = found->second;
  if (state.outstanding.contains(chunk)) drop_request(peer, state, chunk);
  state.deferred[chunk] = now + config_.defer_period;
}

// --- state -------------------------------------------------------------------

bool Core::in_endgame() const {
  return open_.empty() && !requested_.empty();
}

bool Core::is_banned(PeerKey peer) const {
  return strikes(peer) >= config_.max_strikes;
}

unsigned Core::strikes(PeerKey peer) const {
  auto found = strikes_.find(peer);
  return found == strikes_.end() ? 0 : found->second;
}

unsigned Core::pipeline_target(PeerKey peer) const {
  auto found = peers_.find(peer);
  return found == peers_.end() ? 0 : target_for(found->second);
}

std::size_t Core::outstanding(PeerKey peer) const {
  auto found = peers_.find(peer);
  return found == peers_.end() ? 0 : found->second.outstanding.size();
}

unsigned Core::availability(ChunkIndex chunk) const {
  return chunk.value < chunk_count_ ? chunks_[chunk.value].availability : 0;
}

bool Core::any_source() const {
  // A requested chunk was asked of a connected peer that has it; an open one
  // has a source iff its availability is positive, and open_ ends with the
  // most available.
  return !requested_.empty() || (!open_.empty() && open_.rbegin()->primary > 0);
}

// Counts kept in several places for speed must agree: libtorrent's
// INVARIANT_CHECK, for the scheduler. The first disagreement is named.
std::optional<std::string> Core::check_invariants() const {
  std::vector<std::uint32_t> availability(chunk_count_, 0);
  std::vector<std::uint32_t> requests(chunk_count_, 0);
  std::size_t outstanding_total = 0;
  for (const auto& [key, peer] : peers_) {
    if (peer.has.size() != chunk_count_) return fmt::format("peer {:x}: bitfield of {} bits", key, peer.has.size());
    if (is_banned(key)) return fmt::format("peer {:x} is banned yet connected", key);
    for (std::uint32_t i = 0; i < chunk_count_; ++i) {
      if (peer.has.test(ChunkIndex{i})) ++availability[i];
    }
    for (const auto& [chunk, when] : peer.outstanding) {
      if (chunk.value >= chunk_count_)
        return fmt::format("peer {:x} asked for chunk {} of {}", key, chunk.value, chunk_count_);
      const auto& requesters = chunks_[chunk.value].requesters;
      if (std::find(requesters.begin(), requesters.end(), key) == requesters.end()) {
        return fmt::format("chunk {} is outstanding at peer {:x} but not among its requesters", chunk.value, key);
      }
      ++requests[chunk.value];
      ++outstanding_total;
    }
  }
  std::size_t requesters_total = 0;
  std::size_t missing = 0;
  for (std::uint32_t i = 0; i < chunk_count_; ++i) {
    const ChunkState& chunk = chunks_[i];
    if (chunk.availability != availability[i]) {
      return fmt::format("chunk {}: availability {} but {} connected peers have it", i, chunk.availability,
                         availability[i]);
    }
    if (chunk.requesters.size() != requests[i]) {
      return fmt::format("chunk {}: {} requesters but {} peers have it outstanding", i, chunk.requesters.size(),
                         requests[i]);
    }
    requesters_total += chunk.requesters.size();
    if (have_.test(ChunkIndex{i}) != (chunk.status == ChunkStatus::kHave)) {
      return fmt::format("chunk {}: the have bit disagrees with its status", i);
    }
    if (chunk.status != ChunkStatus::kMissing) {
      if (!chunk.requesters.empty()) return fmt::format("chunk {} is requested but no longer missing", i);
      continue;
    }
    ++missing;
    const bool filed =
        chunk.requesters.empty()
            ? open_.contains(PoolKey{chunk.availability, chunk.tiebreak, i})
            : requested_.contains(PoolKey{static_cast<std::uint32_t>(chunk.requesters.size()), chunk.tiebreak, i});
    if (!filed) return fmt::format("missing chunk {} is not in its pool under its current key", i);
  }
  if (outstanding_total != requesters_total) {
    return fmt::format("{} requests outstanding at peers, {} requesters at chunks", outstanding_total,
                       requesters_total);
  }
  if (open_.size() + requested_.size() != missing) {
    return fmt::format("{} chunks in the pools, {} missing", open_.size() + requested_.size(), missing);
  }
  return std::nullopt;
}

}  // namespace detail

// --- the public face: forwards, and checks after each event in invariant builds

Scheduler::Scheduler(std::uint32_t chunk_count, const Bitfield& have, Config config)
    : core_(std::make_unique<detail::Core>(chunk_count, have, config)) {
  checked();
}
Scheduler::~Scheduler() = default;
Scheduler::Scheduler(Scheduler&&) noexcept = default;
Scheduler& Scheduler::operator=(Scheduler&&) noexcept = default;

void Scheduler::checked() const {
  if constexpr (kCheckInvariants) {
    if (auto broken = core_->check_invariants()) throw std::logic_error("scheduler invariant broken: " + *broken);
  }
}

std::optional<std::string> Scheduler::check_invariants() const {
  return core_->check_invariants();
}

bool Scheduler::add_peer(PeerKey peer, const Bitfield& has) {
  const bool added = core_->add_peer(peer, has);
  checked();
  return added;
}

void Scheduler::on_have(PeerKey peer, ChunkIndex chunk) {
  core_->on_have(peer, chunk);
  checked();
}

std::vector<ChunkIndex> Scheduler::remove_peer(PeerKey peer) {
  auto returned = core_->remove_peer(peer);
  checked();
  return returned;
}

std::vector<ChunkIndex> Scheduler::next_requests(PeerKey peer, Clock::time_point now, std::size_t limit) {
  auto picks = core_->next_requests(peer, now, limit);
  checked();
  return picks;
}

void Scheduler::prioritize(ChunkIndex first, ChunkIndex end) {
  core_->prioritize(first, end);
  checked();
}

std::size_t Scheduler::total_outstanding() const {
  return core_->total_outstanding();
}

std::vector<PeerKey> Scheduler::stalled_peers(Clock::time_point now) const {
  return core_->stalled_peers(now);
}

std::optional<std::vector<Cancel>> Scheduler::on_chunk_arrived(PeerKey peer, ChunkIndex chunk, Clock::time_point now) {
  auto cancels = core_->on_chunk_arrived(peer, chunk, now);
  checked();
  return cancels;
}

void Scheduler::on_chunk_done(ChunkIndex chunk) {
  core_->on_chunk_done(chunk);
  checked();
}

bool Scheduler::on_bad_chunk(PeerKey peer, ChunkIndex chunk) {
  const bool banned = core_->on_bad_chunk(peer, chunk);
  checked();
  return banned;
}

void Scheduler::on_chunk_lost(ChunkIndex chunk) {
  core_->on_chunk_lost(chunk);
  checked();
}

void Scheduler::on_rejected(PeerKey peer, ChunkIndex chunk) {
  core_->on_rejected(peer, chunk);
  checked();
}

void Scheduler::on_deferred(PeerKey peer, ChunkIndex chunk, Clock::time_point now) {
  core_->on_deferred(peer, chunk, now);
  checked();
}

const Bitfield& Scheduler::have() const noexcept {
  return core_->have_;
}

bool Scheduler::complete() const noexcept {
  return core_->have_.all();
}

bool Scheduler::in_endgame() const {
  return core_->in_endgame();
}

bool Scheduler::is_banned(PeerKey peer) const {
  return core_->is_banned(peer);
}

unsigned Scheduler::strikes(PeerKey peer) const {
  return core_->strikes(peer);
}

std::size_t Scheduler::peer_count() const noexcept {
  return core_->peers_.size();
}

unsigned Scheduler::pipeline_target(PeerKey peer) const {
  return core_->pipeline_target(peer);
}

std::size_t Scheduler::outstanding(PeerKey peer) const {
  return core_->outstanding(peer);
}

unsigned Scheduler::availability(ChunkIndex chunk) const {
  return core_->availability(chunk);
}

bool Scheduler::any_source() const {
  return core_->any_source();
}

}  // namespace p2pshare::sched
