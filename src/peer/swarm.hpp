// One file's swarm on this peer: the connections to other peers that hold
// or want it, serving the chunks we have and, while downloading, fetching
// the ones we lack through the scheduler.
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

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <asio.hpp>

#include "control.pb.h"
#include "p2pshare/bitfield.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/rate.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/store.hpp"
#include "p2pshare/wire.hpp"
#include "peer.pb.h"
#include "peer/central_link.hpp"
#include "peer/state.hpp"

namespace p2pshare::peer {

// Chunk-sized buffers reused across chunks: no allocation per chunk in the
// steady state. Buffers return to the pool when the last owner drops them,
// from any thread.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // Page-aligned, so a received chunk can be written with O_DIRECT.
  using Buffer = std::shared_ptr<store::ChunkBytes>;
  Buffer acquire(std::size_t size);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<store::ChunkBytes>> free_;
};

struct Services {
  asio::io_context& io;
  asio::thread_pool& disk;
  PeerState& state;
  std::shared_ptr<CentralLink> central;
  std::shared_ptr<TokenBucket> upload;
  std::shared_ptr<TokenBucket> download;
  std::shared_ptr<BufferPool> buffers;
  PeerId self;
  sched::Config sched_config;
  std::size_t max_links_per_file = 50;
  std::chrono::milliseconds tick{250};
  std::chrono::milliseconds holder_refresh{2000};
  // Seeding (set by the server): the identity a shared file had when it was
  // hashed, for the reader to hold it to; and a chunk that could not be read
  // (file changed or gone) makes the server check the file at once.
  std::function<std::optional<store::FileIdentity>(const FileId&)> shared_identity;
  std::function<void(const FileId&)> on_unreadable;
};

class Swarm;

// One connection to another peer about one file.
class PeerLink : public std::enable_shared_from_this<PeerLink> {
 public:
  using Lookup = std::function<std::shared_ptr<Swarm>(const FileId&)>;
  // An accepted connection whose first frame, `hello`, named the peer
  // plane: answers it, then expects Interested.
  static std::shared_ptr<PeerLink> accept(Services& services, std::shared_ptr<wire::Connection> connection,
                                          Lookup lookup, std::string_view hello);
  // A connection we opened to download: sends Hello and Interested.
  static std::shared_ptr<PeerLink> open(Services& services, std::shared_ptr<wire::Connection> connection,
                                        std::shared_ptr<Swarm> swarm, PeerId expected);

  void send_have(ChunkIndex chunk);
  void send_request(ChunkIndex chunk);
  void send_cancel(ChunkIndex chunk);
  void close(const std::string& reason);
  bool closed() const;
  sched::PeerKey key() const { return key_; }
  const PeerId& remote_id() const { return remote_id_; }
  std::uint64_t downloaded() const { return downloaded_; }

 private:
  friend class Swarm;
  enum class Stage { await_hello, await_welcome, await_interested, await_bitfield, active };
  PeerLink(Services& services, std::shared_ptr<wire::Connection> connection);
  void start();
  void on_frame(std::string_view message, std::uint32_t payload_length);
  void on_closed(const std::string& reason);
  void handle_active(const pb::PeerMessage& message, std::uint32_t payload_length);
  void on_piece(ChunkIndex chunk, std::uint32_t payload_length);
  void serve_more();
  void protocol_error(const std::string& why);

  Services& services_;
  std::shared_ptr<wire::Connection> connection_;
  Lookup lookup_;
  std::weak_ptr<Swarm> swarm_;
  Stage stage_ = Stage::await_hello;
  PeerId remote_id_;
  sched::PeerKey key_ = 0;
  std::unordered_set<std::uint32_t> asked_;  // requests we sent, not yet answered
  std::deque<std::uint32_t> serve_queue_;    // requests we owe, in order
  unsigned reads_in_flight_ = 0;
  std::optional<std::uint32_t> receiving_;  // payload being read into a buffer
  Bitfield remote_have_;                    // what the other side has, as it told us
  Bitfield sent_;                           // chunks it asked us for and we accepted (serving)
  Bitfield deferred_;                       // chunks we answered "busy" to it once
  bool verified_ = false;                   // we dialled it and its Welcome matched the registry
  std::uint64_t downloaded_ = 0;
};

// Someone waiting on a download: a control connection's request-file.
struct Observer {
  std::function<void(const pb::Progress&)> progress;
  std::function<void(const pb::Downloaded*, const std::string& error)> finished;
};

class Swarm : public std::enable_shared_from_this<Swarm> {
 public:
  static std::shared_ptr<Swarm> seed(Services& services, Manifest manifest, std::filesystem::path path,
                                     std::uint64_t uploaded);
  static std::shared_ptr<Swarm> download(Services& services, DownloadRecord record);

  const FileId& id() const { return id_; }
  const Manifest& manifest() const { return *manifest_; }
  bool complete() const { return have_.all(); }
  bool downloading() const { return partial_ != nullptr; }
  const Bitfield& have() const { return have_; }
  const std::filesystem::path& path() const { return path_; }
  std::uint64_t uploaded() const { return uploaded_; }
  std::uint64_t bytes_received() const { return bytes_received_; }
  std::string state_text() const;
  std::size_t link_count() const { return links_.size(); }
  std::uint64_t have_bytes() const;

  // Starts (or restarts after a failure) the download; verifies what the
  // resume state claims first unless the last stop was clean.
  void start_download(bool wait_for_holders);
  void add_observer(Observer observer);
  // Stops serving and downloading; closes every link. Partial data stays.
  void shutdown(bool persist_clean);
  // What the central server should hear about this file.
  pb::CentralRequest announcement() const;

 private:
  friend class PeerLink;
  Swarm(Services& services, Manifest manifest);
  void attach(const std::shared_ptr<PeerLink>& link, const Bitfield& remote_have);
  void detach(PeerLink& link);
  std::size_t chunk_budget() const;
  void fill(PeerLink& link);
  void fill_all();
  void on_remote_have(PeerLink& link, ChunkIndex chunk);
  void on_rejected(PeerLink& link, ChunkIndex chunk);
  void on_deferred(PeerLink& link, ChunkIndex chunk);
  // Serving: answer this request "busy" instead of sending the chunk?
  bool should_defer(PeerLink& link, ChunkIndex chunk);
  // A Piece header arrived: should its payload be kept? (endgame may have
  // made it a duplicate). Cancels sent to other peers here.
  bool accept_piece(PeerLink& link, ChunkIndex chunk);
  void on_payload(PeerLink& link, ChunkIndex chunk, BufferPool::Buffer buffer);
  void on_chunk_checked(sched::PeerKey from, ChunkIndex chunk, bool hash_ok, const std::string& io_error);
  void on_payload_lost(ChunkIndex chunk);
  bool has_chunk(ChunkIndex chunk) const { return have_.test(chunk); }
  void read_chunk(ChunkIndex chunk, std::function<void(BufferPool::Buffer, const std::string& error)> done);
  void count_upload(std::uint64_t bytes);

  void verify_resume_state();
  void begin_transfer();
  void tick();
  void refresh_holders();
  void connect_to(const PeerId& peer, const std::string& host, std::uint16_t port);
  void save_resume(bool clean);

 public:
  // Writes the bytes uploaded since the last call to the state (shared files).
  void save_uploaded();
  // Deletes the partial file of a download given up for good.
  void discard_partial();

 private:
  void finish();
  void fail(const std::string& error);
  void notify_progress();

  Services& services_;
  std::shared_ptr<const Manifest> manifest_;
  FileId id_;
  Bitfield have_;
  std::filesystem::path path_;                   // seeding: the file; downloading: the destination
  std::shared_ptr<store::ChunkReader> reader_;   // seeding
  std::shared_ptr<store::PartialFile> partial_;  // downloading
  DownloadRecord record_;
  std::optional<sched::Scheduler> scheduler_;
  std::set<std::shared_ptr<PeerLink>> links_;          // past the handshake
  std::set<std::shared_ptr<PeerLink>> pending_links_;  // dialled, handshake under way
  std::unordered_map<sched::PeerKey, PeerLink*> by_key_;
  std::set<PeerId> connecting_;
  std::map<PeerId, std::chrono::steady_clock::time_point> failed_peers_;  // do not redial at once
  std::vector<Observer> observers_;
  asio::steady_timer timer_;
  std::uint64_t uploaded_ = 0;
  std::uint64_t uploaded_unsaved_ = 0;
  std::uint64_t bytes_received_ = 0;
  std::uint32_t announced_chunks_ = 0;
  std::size_t disk_jobs_ = 0;  // chunks being hashed and written
  std::size_t fill_cursor_ = 0;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_refresh_;
  std::chrono::steady_clock::time_point last_save_;
  std::chrono::steady_clock::time_point sourceless_since_;
  bool refreshing_ = false;
  bool saving_ = false;
  bool resume_dirty_ = false;
  bool wait_for_holders_ = false;
  bool active_ = false;  // download running (not failed, not finished)
  bool finishing_ = false;
  bool is_download_ = false;  // created to download; false once finished (then it seeds)
  bool stopped_ = false;
  std::string failure_;
};

sched::PeerKey key_of(const PeerId& id);

}  // namespace p2pshare::peer
