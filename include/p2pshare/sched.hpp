// Which chunk to ask of which peer: pure logic, no sockets, no clocks of its
// own (time is passed in), no threads. One Scheduler per download.
//
// Threading: not thread-safe; the owning Transfer calls it from the network
// thread only.
//
// Policy (docs/architecture.md explains the why):
// - Rarest first: among chunks we lack, that nobody has been asked for, and
//   that the peer has, pick the one fewest connected peers have; ties broken
//   by a per-download random order so peers do not all pick the same chunk.
// - Endgame: once every missing chunk is requested, a chunk may also be asked
//   of another peer (at most `endgame_copies` requests per chunk in all); when
//   one copy arrives the others are cancelled (on_chunk_arrived returns them).
// - Pipelining: each peer gets a target number of requests in flight, sized so
//   that its observed delivery rate times `pipeline_seconds` is in flight,
//   within [min_pipeline, max_pipeline]. A slow peer gets fewer, a fast one more.
// - Failures: a peer removed (gone, stalled) or a rejected request gives its
//   outstanding chunks back to the pool at once.
// - Deferrals: a seed that answers "busy" (others have the chunk or are
//   getting it from the seed) is not asked for that chunk again for
//   `defer_period`; other peers are, and its bit stays set meanwhile, so the
//   chunk keeps a source.
// - Strikes: a chunk that fails its hash is a strike against the peer that
//   sent it; at `max_strikes` the peer is banned from this download (it is
//   never asked again, even if it reconnects with the same key).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::sched {

using Clock = std::chrono::steady_clock;
// Identifies a remote peer for the life of a download. Stable across
// reconnects (derived from the peer id), so a ban survives a reconnect.
using PeerKey = std::uint64_t;

struct Config {
  std::uint32_t chunk_size = 256 * 1024;  // nominal; the last chunk may be shorter
  unsigned max_strikes = 3;
  unsigned min_pipeline = 2;
  unsigned max_pipeline = 64;
  unsigned initial_pipeline = 4;
  double pipeline_seconds = 0.25;                    // in-flight data target, in seconds of the peer's rate
  unsigned endgame_copies = 2;                       // requests per chunk at most, in endgame
  std::chrono::milliseconds request_timeout{15000};  // a request older than this: peer stalled
  std::chrono::milliseconds defer_period{1000};      // a "busy" chunk is not asked of that peer again for this long
  std::uint64_t random_seed = 0;
};

struct Cancel {
  PeerKey peer;
  ChunkIndex chunk;
};

class Scheduler {
 public:
  // `have`: chunks already verified on disk (resume). chunk_count == have.size().
  Scheduler(std::uint32_t chunk_count, Bitfield have, Config config);

  // --- peers ---------------------------------------------------------------
  // A peer connected and told us what it has. False (and ignored) if the peer
  // is banned, already known, or `has` has the wrong size.
  bool add_peer(PeerKey peer, const Bitfield& has);
  // The peer announced a new chunk. Ignored for unknown peers or bad indexes.
  void on_have(PeerKey peer, ChunkIndex chunk);
  // The peer is gone (disconnected, stalled, banned by the caller). Its
  // outstanding requests become requestable from others. Returns them.
  std::vector<ChunkIndex> remove_peer(PeerKey peer);

  // --- decisions -----------------------------------------------------------
  // The chunks to request from `peer` now, to bring its in-flight count up to
  // its pipeline target, and at most `limit` of them (the caller's budget of
  // memory for chunks in flight). Records them as outstanding at `now`. Empty
  // for unknown or banned peers, or when it has nothing we need.
  std::vector<ChunkIndex> next_requests(PeerKey peer, Clock::time_point now,
                                        std::size_t limit = static_cast<std::size_t>(-1));
  // Requests outstanding at every peer together.
  std::size_t total_outstanding() const;
  // Peers whose oldest outstanding request is older than request_timeout.
  std::vector<PeerKey> stalled_peers(Clock::time_point now) const;

  // --- outcomes ------------------------------------------------------------
  // A chunk's bytes arrived from `peer` (not yet verified). The chunk leaves
  // the request pool; returns the duplicate requests to cancel (endgame).
  // Returns nullopt if the chunk was not outstanding at that peer (unasked
  // data: the caller drops it and may penalise the peer).
  std::optional<std::vector<Cancel>> on_chunk_arrived(PeerKey peer, ChunkIndex chunk, Clock::time_point now);
  // The arrived chunk matched its hash and is written: we have it.
  void on_chunk_done(ChunkIndex chunk);
  // The arrived chunk failed its hash: strike against `peer`; the chunk is
  // missing again. Returns true if this strike banned the peer (the caller
  // should then disconnect it; remove_peer is implied and already done).
  bool on_bad_chunk(PeerKey peer, ChunkIndex chunk);
  // The chunk could not be written (disk trouble): missing again, no strike.
  void on_chunk_lost(ChunkIndex chunk);
  // The peer refused the request (does not have it): missing again, and the
  // peer is not asked for it until it announces it with on_have.
  void on_rejected(PeerKey peer, ChunkIndex chunk);
  // The peer has the chunk but asks us to get it elsewhere (a seed sparing
  // its upload): missing again, and not asked of this peer before
  // now + defer_period. Other peers may be asked at once.
  void on_deferred(PeerKey peer, ChunkIndex chunk, Clock::time_point now);

  // --- state ---------------------------------------------------------------
  const Bitfield& have() const noexcept { return have_; }
  bool complete() const noexcept { return have_.all(); }
  bool in_endgame() const;
  bool is_banned(PeerKey peer) const;
  unsigned strikes(PeerKey peer) const;
  std::size_t peer_count() const noexcept { return peers_.size(); }
  unsigned pipeline_target(PeerKey peer) const;
  std::size_t outstanding(PeerKey peer) const;
  // How many connected peers have the chunk.
  unsigned availability(ChunkIndex chunk) const;
  // True when some connected, unbanned peer has a chunk we still lack
  // (if false and we are incomplete, the download cannot progress).
  bool any_source() const;

 private:
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
    auto operator<=>(const PoolKey&) const = default;
  };
  struct PeerState {
    Bitfield has;                                            // what it announced, minus what it rejected since
    std::map<std::uint32_t, Clock::time_point> outstanding;  // chunk -> when requested
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
    std::map<std::uint32_t, Clock::time_point> deferred;
  };

  // Every change to a missing chunk's availability or requesters goes between
  // unfile() and refile(), so that its pool key is always current.
  void unfile(std::uint32_t index);
  // moved_later: only the availability grew, so no scan_from is invalidated.
  void refile(std::uint32_t index, bool moved_later = false);
  void add_request(PeerKey key, PeerState& peer, std::uint32_t index, Clock::time_point now);
  void drop_request(PeerKey key, PeerState& peer, std::uint32_t index);
  void set_peer_bit(PeerState& peer, std::uint32_t index, bool value);
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
  std::vector<std::uint32_t> by_tiebreak_;  // chunk index at each tiebreak position
  // Missing chunks nobody is asked for, rarest first: (availability, tiebreak, index).
  std::set<PoolKey> open_;
  // Missing chunks asked of someone, fewest requests first: (requests, tiebreak, index).
  std::set<PoolKey> requested_;
  // Bumped whenever a chunk enters open_ or moves earlier in it.
  std::uint64_t open_epoch_ = 0;
};

}  // namespace p2pshare::sched
