// The scheduler's bookkeeping (see p2pshare/sched.hpp for the contract and
// the policy). Not part of the library's interface: only src/sched.cpp and
// the scheduler's own tests include it, the tests to break an invariant on
// purpose, which is why the state is public here.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::sched::detail {

class Core {
 public:
  Core(std::uint32_t chunk_count, const Bitfield& have, Config config);

  // The operations of sched::Scheduler, one for one (documented there).
  bool add_peer(PeerKey peer, const Bitfield& has);
  void on_have(PeerKey peer, ChunkIndex chunk);
  std::vector<ChunkIndex> remove_peer(PeerKey peer);
  std::vector<ChunkIndex> next_requests(PeerKey peer, Clock::time_point now, std::size_t limit);
  void prioritize(ChunkIndex first, ChunkIndex end);
  std::size_t total_outstanding() const;
  std::vector<PeerKey> stalled_peers(Clock::time_point now) const;
  std::optional<std::vector<Cancel>> on_chunk_arrived(PeerKey peer, ChunkIndex chunk, Clock::time_point now);
  void on_chunk_done(ChunkIndex chunk);
  bool on_bad_chunk(PeerKey peer, ChunkIndex chunk);
  void on_chunk_lost(ChunkIndex chunk);
  void on_rejected(PeerKey peer, ChunkIndex chunk);
  void on_deferred(PeerKey peer, ChunkIndex chunk, Clock::time_point now);
  bool in_endgame() const;
  bool is_banned(PeerKey peer) const;
  unsigned strikes(PeerKey peer) const;
  unsigned pipeline_target(PeerKey peer) const;
  std::size_t outstanding(PeerKey peer) const;
  unsigned availability(ChunkIndex chunk) const;
  bool any_source() const;
  std::optional<std::string> check_invariants() const;

  enum class ChunkStatus : std::uint8_t {
    kMissing,  // wanted: open, or requested from one or more peers
    kPending,  // arrived, awaiting hash check and write; never requested again
    kHave,
  };
  struct ChunkState {
    ChunkStatus status = ChunkStatus::kMissing;
    std::uint32_t availability = 0;   // connected peers whose bit is set
    std::uint32_t tiebreak = 0;       // position in this download's random permutation
    std::vector<PeerKey> requesters;  // peers with a request outstanding (endgame: several)
  };
  // Sort key for the two chunk pools: (primary, tiebreak, index), where primary
  // is the availability in open_ and the number of requests in requested_.
  struct PoolKey {
    std::uint32_t primary;
    std::uint32_t tiebreak;
    std::uint32_t index;
    // NOLINTNEXTLINE(modernize-use-nullptr): clang-tidy 14 misreads the defaulted <=>
    auto operator<=>(const PoolKey&) const = default;
  };
  struct PeerState {
    Bitfield has;                                         // what it announced, minus what it rejected since
    std::map<ChunkIndex, Clock::time_point> outstanding;  // chunk -> when requested
    // Delivery rate in bytes per second, a moving average over samples of at
    // least 50 ms of busy time each; unknown until the first sample closes.
    double rate = 0;
    bool rate_known = false;
    std::optional<Clock::time_point> last_arrival;
    std::uint64_t window_bytes = 0;
    Clock::duration window_busy{};
    // Where its next scan of open_ may start: no chunk it has sits before this
    // key, as long as open_epoch_ still equals scan_epoch. Without it, a peer
    // lacking the rarest chunks would walk past all of them on every call.
    std::optional<PoolKey> scan_from;
    std::uint64_t scan_epoch = 0;
    // Chunks it deferred (on_deferred), until when. A handful at a time.
    std::map<ChunkIndex, Clock::time_point> deferred;
  };

  // Every change to a missing chunk's availability or requesters goes between
  // unfile() and refile(), so that its pool key is always current.
  void unfile(ChunkIndex chunk);
  // moved_later: only the availability grew, so no scan_from is invalidated.
  void refile(ChunkIndex chunk, bool moved_later = false);
  void add_request(PeerKey key, PeerState& peer, ChunkIndex chunk, Clock::time_point now);
  void drop_request(PeerKey key, PeerState& peer, ChunkIndex chunk);
  void set_peer_bit(PeerState& peer, ChunkIndex chunk, bool value);
  // Sets (or clears) in the peer every bit set in `bits`.
  void set_peer_bits(PeerState& peer, const Bitfield& bits, bool value);
  void rebuild_open();
  void record_delivery(PeerState& peer, Clock::time_point requested_at, Clock::time_point now);
  unsigned target_for(const PeerState& peer) const;
  bool endgame_allowed() const;

  std::uint32_t chunk_count_;
  Bitfield have_;
  Config config_;
  std::unordered_map<PeerKey, PeerState> peers_;
  // Outlives remove_peer on purpose: a ban must survive a reconnect.
  std::unordered_map<PeerKey, unsigned> strikes_;
  std::vector<ChunkState> chunks_;
  std::vector<ChunkIndex> by_tiebreak_;  // chunk index at each tiebreak position
  // Missing chunks nobody is asked for, rarest first: (availability, tiebreak, index).
  std::set<PoolKey> open_;
  // Missing chunks asked of someone, fewest requests first: (requests, tiebreak, index).
  std::set<PoolKey> requested_;
  // Bumped whenever a chunk enters open_ or moves earlier in it.
  std::uint64_t open_epoch_ = 0;
  // prioritize(): chunks [priority_first_, priority_end_) go before rarest first.
  std::uint32_t priority_first_ = 0;
  std::uint32_t priority_end_ = 0;
};

}  // namespace p2pshare::sched::detail
