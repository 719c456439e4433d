// The download side of a Swarm: what exists only while this peer fetches
// the file (scheduler, partial file, resume bookkeeping, holder refresh, the
// request-file observers). A Swarm owns one from Swarm::download() until the
// file is complete and moved to its destination; a seed never has one.
//
// Threading: network thread only (the disk jobs get copies of what they use).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <variant>
#include <vector>

#include <asio.hpp>

#include "control.pb.h"
#include "p2pshare/error.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/store.hpp"
#include "p2pshare/types.hpp"
#include "peer/state.hpp"

namespace p2pshare::peer {

// How a download ended: the finished file, or why not.
using DownloadOutcome = std::variant<pb::Downloaded, Failure>;

// Someone waiting on a download: a control connection's request-file.
struct Observer {
  std::function<void(const pb::Progress&)> progress;
  // Once, when the download finishes, fails or is stopped.
  std::function<void(const DownloadOutcome&)> finished;
  // Optional: a chunk was verified and written (streams wait on it).
  std::function<void(ChunkIndex)> chunk_done{};
};

struct Download {
  using Clock = std::chrono::steady_clock;
  Download(asio::io_context& io, DownloadRecord download_record) : record(std::move(download_record)), timer(io) {}

  DownloadRecord record;                        // its manifest moved to the swarm: one copy of the hash list
  std::shared_ptr<store::PartialFile> partial;  // from start_download on
  std::shared_ptr<store::ChunkWriter> writer;   // writes partial's verified chunks
  std::optional<sched::Scheduler> scheduler;    // while chunks are being fetched
  std::vector<Observer> observers;
  asio::steady_timer timer;  // tick(): stalls, progress, resume saves, holder refresh
  bool wait_for_holders = false;

  // Holders: dialled and not yet linked, and those that failed lately (not redialled at once).
  std::set<PeerId> connecting;
  std::map<PeerId, Clock::time_point> failed_peers;
  bool refreshing = false;
  Clock::time_point last_refresh;
  Clock::time_point sourceless_since;
  std::uint32_t announced_chunks = 0;

  // Chunks between the socket and the disk.
  std::size_t disk_jobs = 0;  // being hashed and written
  std::size_t fill_cursor = 0;
  std::uint64_t bytes_received = 0;
  Clock::time_point started;
  // Swarm::prioritize(): chunks a reader waits for, handed to the scheduler.
  std::pair<ChunkIndex, ChunkIndex> priority{};

  // Streams (request-file --stdout) reading the file, each at the next chunk
  // it will read: the scheduler takes only the read-ahead window after the
  // slowest of them. --sequential: a window after the first missing chunk,
  // ahead of (not instead of) rarest first.
  std::map<std::uint64_t, std::uint32_t> streams;
  bool sequential = false;
  std::uint32_t first_missing = 0;
  // Resume state.
  bool saving = false;
  bool resume_dirty = false;
  Clock::time_point last_save;
};

}  // namespace p2pshare::peer
