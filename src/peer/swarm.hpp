// One file's swarm on this peer: the links to other peers that hold or want
// it, the serving side (answers their requests from our copy) and, while
// this peer downloads the file, the Download (download.hpp) that fetches
// what we lack through the scheduler.
//
// Lifecycle: one SwarmState, changed only by enter(), which knows the legal
// transitions. A shared file starts `seeding`; a download starts `idle` and
// goes verifying (resume state after an unclean stop) -> downloading ->
// finishing -> seeding, or to `failed` (a retry starts it again) or
// `stopped` (no longer shared).
//
// Threading: everything here runs on the network thread, except the jobs
// posted to the disk pool (pread, hash, pwrite, fsync), which touch only the
// immutable manifest, the file objects (pread/pwrite are position-free) and
// their own buffers, and post their results back to the network thread.
//
// The path of one chunk (docs/architecture.md tells it in full): seeder's
// disk pool preads it into a pooled buffer -> network thread sends Piece
// header + buffer -> downloader's network thread reads the payload straight
// into a pooled buffer -> disk pool hashes it and pwrites it at its offset
// -> network thread marks it done, tells every connected peer (Have), and the
// resume state records it at the next sync.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <variant>

#include "control.pb.h"
#include "p2pshare/bitfield.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/store.hpp"
#include "peer/download.hpp"
#include "peer/link.hpp"
#include "peer/services.hpp"
#include "peer/state.hpp"

namespace p2pshare::peer {

enum class SwarmState {
  idle,         // a download not started yet
  verifying,    // hashing the chunks an unclean stop's resume state claims
  downloading,  // fetching chunks (or waiting for a holder)
  finishing,    // every chunk written: syncing and moving to the destination
  seeding,      // we have the whole file and serve it
  failed,       // the download ended in failure(); a request-file retries it
  stopped,      // no longer shared: links closed
};

class Swarm : public LinkOwner, public std::enable_shared_from_this<Swarm> {
 public:
  static std::shared_ptr<Swarm> seed(Services& services, Manifest manifest, std::filesystem::path path,
                                     std::uint64_t uploaded);
  static std::shared_ptr<Swarm> download(Services& services, DownloadRecord record);

  SwarmState state() const { return state_; }
  // For `status`: "seeding", "downloading", "failed: why", ...
  std::string state_text() const;
  bool complete() const { return have_.all(); }
  // Downloading, or a download started and then failed: a partial file exists.
  bool downloading() const { return download_ && download_->partial; }
  const std::filesystem::path& path() const { return path_; }
  std::uint64_t uploaded() const { return serving_.uploaded; }
  std::uint64_t bytes_received() const { return download_ ? download_->bytes_received : 0; }
  std::size_t link_count() const { return links_.size(); }
  const std::set<std::shared_ptr<PeerLink>>& links() const { return links_; }
  std::uint64_t have_bytes() const;

  // Starts (or restarts after a failure) the download; verifies what the
  // resume state claims first unless the last stop was clean.
  void start_download(bool wait_for_holders);
  void add_observer(Observer observer);
  // request-file --stdout: stream `token` reads `next` next (nullopt: it
  // ended). While any stream is open only its read-ahead window is fetched.
  void set_stream_position(std::uint64_t token, std::optional<std::uint32_t> next);
  // request-file --sequential: chunks in order first.
  void set_sequential();
  // A reader waits for chunks [first, end): they are asked for before any
  // other (a sched::Window; a --stdout stream's window goes first). Nothing
  // for a seed.
  void prioritize(ChunkIndex first, ChunkIndex end);
  // A reader of the file while it downloads (the gateway) sees each chunk's
  // bytes as they are verified and written: the partial file is written
  // O_DIRECT, so reading it back would go to the disk. A tap that returns
  // false is removed.
  using ChunkTap = std::function<bool(ChunkIndex, const BufferPool::Buffer&)>;
  void add_chunk_tap(ChunkTap tap);
  // Stops serving and downloading; closes every link. Partial data stays.
  void shutdown(bool persist_clean);
  // What the central server should hear about this file.
  pb::CentralRequest announcement() const;
  // Tells the central server announcement(), without waiting for the answer:
  // a lost one is repeated at the next registration (CentralLink's
  // on_registered); one answered "unavailable" (its store is away) is
  // repeated with a backoff of 1 s doubling to 60 s while the file stays
  // here (one retry chain per file). One refused for a per-peer limit is
  // logged once and not repeated: refused_for_limit() until an announce
  // is taken (the peer-server tries again when it withdraws a file).
  void announce() const;
  bool refused_for_limit() const { return refused_for_limit_; }
  // Writes the bytes uploaded since the last call to the state (shared files).
  void save_uploaded();
  // Deletes the partial file of a download given up for good.
  void discard_partial();

  // --- LinkOwner ---------------------------------------------------------
  const FileId& id() const override { return id_; }
  const Manifest& manifest() const override { return *manifest_; }
  const Bitfield& have() const override { return have_; }
  void attach(const std::shared_ptr<PeerLink>& link) override;
  void detach(PeerLink& link) override;
  void on_remote_have(PeerLink& link, ChunkIndex chunk) override;
  bool on_piece_header(PeerLink& link, ChunkIndex chunk) override;
  void on_payload(PeerLink& link, ChunkIndex chunk, BufferPool::Buffer buffer) override;
  void on_payload_lost(ChunkIndex chunk) override;
  void on_received(std::uint64_t bytes) override;
  void on_rejected(PeerLink& link, ChunkIndex chunk) override;
  void on_deferred(PeerLink& link, ChunkIndex chunk) override;
  bool should_defer(const PeerLink& link, ChunkIndex chunk) override;
  void read_chunk(ChunkIndex chunk, ReadDone done) override;
  void on_sent(std::uint64_t bytes) override;
  const std::vector<std::string>& groups() const override { return groups_; }
  const std::vector<pb::Capability>& capabilities() const override { return capabilities_; }
  bool visibility_known() const override { return visibility_known_; }
  // Seeding: the groups this peer registered the file in (empty: public).
  void set_groups(std::vector<std::string> groups) { groups_ = std::move(groups); }
  // Replicas: the target this owner asks for (announced once complete), and
  // whether this is a volunteer's cache copy.
  void set_replicas(std::optional<std::uint32_t> replicas) { replicas_ = replicas; }
  std::optional<std::uint32_t> replicas() const { return replicas_; }
  void set_cached(bool cached) { cached_ = cached; }
  bool cached() const { return cached_; }

 private:
  // The serving side's own state.
  struct Serving {
    std::shared_ptr<store::ChunkReader> reader;  // seeding: opened at the first read
    std::uint64_t uploaded = 0;
    std::uint64_t uploaded_unsaved = 0;
  };

  Swarm(Services& services, Manifest manifest);
  // The one place the lifecycle changes. False (and no change) if `next`
  // cannot follow the current state.
  bool enter(SwarmState next);
  bool fetching() const { return state_ == SwarmState::downloading && download_ && download_->scheduler; }

  // --- the download's life (download.cpp) --------------------------------
  std::size_t chunk_budget() const;
  std::optional<sched::Window> window();
  void fill(PeerLink& link);
  void fill_all();
  void on_chunk_checked(sched::PeerKey from, ChunkIndex chunk, bool hash_ok, std::optional<Failure> write_error);
  void verify_resume_state();
  void begin_transfer();
  void tick();
  void refresh_holders();
  void connect_to(const PeerId& peer, const std::string& host, std::uint16_t port);
  void save_resume(bool clean);
  void finish();
  void fail(Failure failure);
  void notify_progress();
  void notify_finished(const DownloadOutcome& outcome);
  void tap_chunk(ChunkIndex chunk, const BufferPool::Buffer& buffer);

  Services& services_;
  std::shared_ptr<const Manifest> manifest_;
  FileId id_;
  SwarmState state_ = SwarmState::idle;
  std::optional<Failure> failure_;  // state_ == failed
  Bitfield have_;
  std::filesystem::path path_;  // seeding: the file; downloading: the destination
  Serving serving_;
  std::unique_ptr<Download> download_;                 // from Swarm::download() until the file is complete and moved
  std::set<std::shared_ptr<PeerLink>> links_;          // past the handshake
  std::set<std::shared_ptr<PeerLink>> pending_links_;  // dialled, handshake under way
  std::unordered_map<sched::PeerKey, PeerLink*> by_key_;
  std::vector<ChunkTap> chunk_taps_;
  std::vector<std::string> groups_;
  // Downloading: the capabilities the central server gave us with the
  // file's holders, renewed at each holder refresh.
  std::vector<pb::Capability> capabilities_;
  // A download learns from its first holder refresh whether the file is a
  // group's; until then it neither announces nor serves.
  bool visibility_known_ = true;
  // An announce answered "unavailable" waits to be repeated (announce()).
  mutable bool announce_retry_pending_ = false;
  mutable bool refused_for_limit_ = false;
  void announce_with_backoff(std::chrono::milliseconds backoff) const;
  std::optional<std::uint32_t> replicas_;
  bool cached_ = false;
};

}  // namespace p2pshare::peer
