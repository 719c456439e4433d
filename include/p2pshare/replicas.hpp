// Replicas and volunteer caches, the central server's side: which files are
// below their replica target and which volunteer fetches each
// (docs/protocol.md, "Replicas and volunteer caches").
//
// A file's target N (register-file --replicas N) asks for N live copies: live
// complete holders other than its owners (the complete holders that asked
// for a target). Volunteers (peer-server --cache-dir) tell their cache limit
// at Register and what it holds in each Heartbeat; the answer to that
// heartbeat (Orders) names files to fetch, files to drop (their owners
// withdrew them: target 0) and the cached files it must keep (evicting one
// would leave that file below its target).
//
// Everything here is soft state, kept in memory, except the target itself,
// which the caller persists (Registry::set_replicas) when a call returns a
// changed one. The registry is read through a View, so this module is pure
// and its unit tests need no server.
//
// Threading: not thread-safe; the central server's network thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "p2pshare/registry.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::central {

struct ReplicaConfig {
  std::uint32_t max_target = 16;  // a larger --replicas is refused
  // Chunks one owner may ask others to hold: the sum over its files of
  // target x chunks (so a hostile peer cannot make every volunteer fetch
  // everything it announces).
  std::uint64_t max_chunks_per_owner = std::uint64_t{4} * 1024 * 1024;
  std::size_t max_fetches_per_volunteer = 2;  // fetches in flight at once
  std::size_t max_list = 64;                  // fetch and drop entries per answer
  std::size_t max_keep = 1024;                // keep entries per answer
  std::size_t max_scan = 256;                 // target files looked at per heartbeat
  // A fetch the volunteer neither finished nor gave up on is handed to
  // another after this long; one it gave up on is not asked of it again
  // before retry_after.
  std::chrono::milliseconds fetch_timeout = std::chrono::minutes(30);
  std::chrono::milliseconds retry_after = std::chrono::minutes(1);
};

class ReplicaPlanner {
 public:
  using Clock = std::chrono::steady_clock;
  // The registry as the planner sees it (now = the time of the call).
  struct View {
    std::function<bool(const PeerId&)> live;
    std::function<std::optional<ReplicaFacts>(const FileId&)> facts;
  };
  struct Orders {
    std::vector<FileId> fetch;
    std::vector<FileId> drop;
    std::vector<FileId> keep;
  };

  explicit ReplicaPlanner(ReplicaConfig config = {}) : config_(config) {}

  // A target read from the registry at start (no owner known yet).
  void load(const FileId& file, std::uint32_t target);
  // A complete holder's Announce with `replicas`: the owner asks for n live
  // copies (0 takes its request back). The target becomes the largest any
  // owner asks (the stored one until an owner announces). Throws
  // Error(bad_request) above max_target, Error(unavailable) past the
  // owner's chunk budget. Returns the new target if it changed.
  std::optional<std::uint32_t> request(const PeerId& owner, const FileId& file, std::uint64_t chunks, std::uint32_t n);
  // The peer withdrew the file: an owner's request goes (the last owner's
  // withdrawal sets the target to 0: volunteers are told to drop it); a
  // volunteer's copy or fetch is forgotten. Returns the new target if it changed.
  std::optional<std::uint32_t> withdraw(const PeerId& peer, const FileId& file);
  // A complete announce: ends the peer's fetch of it; `cached` marks a
  // volunteer's cache copy.
  void announced(const PeerId& peer, const FileId& file, bool cached);
  // Register: limit 0 = not a volunteer. Forgets what the peer fetched or
  // cached before (it re-announces what it holds).
  void registered(const PeerId& peer, std::uint64_t limit, std::uint64_t used);
  // The peer's connection closed: its fetches go to others.
  void disconnected(const PeerId& peer);
  // A volunteer's Heartbeat; nullopt if the peer is not a volunteer.
  std::optional<Orders> heartbeat(const PeerId& peer, std::uint64_t used, const std::vector<FileId>& gave_up,
                                  Clock::time_point now, const View& view);

  std::uint32_t target(const FileId& file) const;
  // Live complete holders other than the owners.
  std::uint32_t live_copies(const FileId& file, const ReplicaFacts& facts) const;
  bool is_volunteer(const PeerId& peer) const { return volunteers_.contains(peer); }
  // Fetches in flight for the file (for tests and metrics).
  std::size_t fetching(const FileId& file) const;

 private:
  struct Target {
    std::uint32_t n = 0;
    std::uint64_t chunks = 0;
    std::map<PeerId, std::uint32_t> owners;        // who asked, and for how many
    std::map<PeerId, Clock::time_point> fetchers;  // volunteer -> asked at
  };
  struct Volunteer {
    std::uint64_t limit = 0;
    std::uint64_t used = 0;
    std::set<FileId> cached;
    std::map<FileId, std::uint64_t> fetching;     // file -> size
    std::map<FileId, Clock::time_point> refused;  // gave up on: not before
  };

  void end_fetch(const PeerId& peer, const FileId& file);
  std::uint32_t recompute(Target& target) const;

  ReplicaConfig config_;
  std::map<FileId, Target> targets_;  // files with a target above 0, or with owners
  std::map<PeerId, Volunteer> volunteers_;
  std::map<PeerId, std::uint64_t> owner_chunks_;
  FileId cursor_{};  // where the next scan of targets_ starts
};

}  // namespace p2pshare::central

// The volunteer's side: which of its complete cache copies go first when it
// needs room (PeerServer's make_room), pure so its unit tests need no server.
namespace p2pshare::cache {

struct CacheCopy {
  FileId file{};
  std::int64_t last_used_ms = 0;  // fetched, or last seen served (0: unknown, the oldest)
  bool keep = false;              // in the central server's latest keep list
};

// The order to evict in: the copies not kept, least recently used first
// (equal times: by file id), then, only when `even_kept` (the limit itself is
// over-run), the kept ones in the same order.
std::vector<FileId> eviction_order(std::vector<CacheCopy> copies, bool even_kept);

}  // namespace p2pshare::cache
