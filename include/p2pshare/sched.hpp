// Which chunk to ask of which peer: pure logic, no sockets, no clocks of its
// own (time is passed in), no threads. One Scheduler per download: events in
// (a peer joined, announced, left; a chunk arrived, was done, bad, lost,
// rejected, deferred), decisions out (which chunks to request of a peer,
// which duplicate requests to cancel, which peers stalled).
//
// Threading: not thread-safe; the owning download (src/peer/download.cpp)
// calls it from the network thread only.
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
// - Priority: a window of chunks set by set_window() (someone reads the file
//   while it downloads: request-file --stdout, --sequential, the HTTP
//   gateway) is asked for first, in index order, before rarest first picks
//   the rest; an exclusive window (a stream) is all that is asked for.
// - Strikes: a chunk that fails its hash is a strike against the peer that
//   sent it; at `max_strikes` the peer is banned from this download (it is
//   never asked again, even if it reconnects with the same key).
//
// The bookkeeping behind this lives in p2pshare/detail/sched_detail.hpp. In
// builds with P2PSHARE_INVARIANTS (debug and sanitizer presets) every event
// ends with check_invariants(), which throws std::logic_error on a broken one.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
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

// A priority window (streaming, --sequential): chunks [first, first + length)
// are picked before any other, in index order. `exclusive`: nothing outside
// the window is picked at all (a stream's read-ahead: a reader that stops
// stops the download once the window is fetched).
struct Window {
  ChunkIndex first{0};
  std::uint32_t length = 0;
  bool exclusive = false;
};

struct Cancel {
  PeerKey peer;
  ChunkIndex chunk;
};

namespace detail {
class Core;
}

class Scheduler {
 public:
  // `have`: chunks already verified on disk (resume). chunk_count == have.size().
  Scheduler(std::uint32_t chunk_count, const Bitfield& have, Config config);
  ~Scheduler();
  Scheduler(Scheduler&&) noexcept;
  Scheduler& operator=(Scheduler&&) noexcept;

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
  // Sets (or with nullopt clears) the priority window; later next_requests
  // calls follow it. Requests already made stay.
  void set_window(std::optional<Window> window);
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
  const Bitfield& have() const noexcept;
  bool complete() const noexcept;
  bool in_endgame() const;
  bool is_banned(PeerKey peer) const;
  unsigned strikes(PeerKey peer) const;
  std::size_t peer_count() const noexcept;
  unsigned pipeline_target(PeerKey peer) const;
  std::size_t outstanding(PeerKey peer) const;
  // How many connected peers have the chunk.
  unsigned availability(ChunkIndex chunk) const;
  // True when some connected, unbanned peer has a chunk we still lack
  // (if false and we are incomplete, the download cannot progress).
  bool any_source() const;

  // The first broken invariant of the bookkeeping (counts that must agree),
  // or nullopt. Always compiled; O(peers x chunks), so only invariant builds
  // run it after every event.
  std::optional<std::string> check_invariants() const;

 private:
  // After each event, in invariant builds: throws std::logic_error.
  void checked() const;

  std::unique_ptr<detail::Core> core_;
};

}  // namespace p2pshare::sched
