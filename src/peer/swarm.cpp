// Swarm: the links, the serving side and the lifecycle (see swarm.hpp). The
// download's life is in download.cpp.
#include "peer/swarm.hpp"

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"

namespace p2pshare::peer {
namespace {

constexpr std::size_t kMaxPooledBuffers = 64;

}  // namespace

BufferPool::Buffer BufferPool::acquire(std::size_t size) {
  std::unique_ptr<store::ChunkBytes> buffer;
  {
    std::lock_guard lock(mutex_);
    if (!free_.empty()) {
      buffer = std::move(free_.back());
      free_.pop_back();
    }
  }
  if (!buffer) buffer = std::make_unique<store::ChunkBytes>();
  buffer->resize(size);
  std::weak_ptr<BufferPool> weak = weak_from_this();
  return Buffer(buffer.release(), [weak](store::ChunkBytes* b) {
    auto pool = weak.lock();
    if (pool) {
      std::lock_guard lock(pool->mutex_);
      if (pool->free_.size() < kMaxPooledBuffers) {
        pool->free_.emplace_back(b);
        return;
      }
    }
    delete b;
  });
}

// ---------------------------------------------------------------------------

Swarm::Swarm(Services& services, Manifest manifest)
    : services_(services),
      manifest_(std::make_shared<const Manifest>(std::move(manifest))),
      id_(manifest_->file_id()),
      have_(manifest_->chunk_count()) {}

std::shared_ptr<Swarm> Swarm::seed(Services& services, Manifest manifest, std::filesystem::path path,
                                   std::uint64_t uploaded) {
  auto swarm = std::shared_ptr<Swarm>(new Swarm(services, std::move(manifest)));
  swarm->state_ = SwarmState::seeding;
  swarm->have_ = Bitfield(swarm->manifest_->chunk_count(), true);
  swarm->path_ = std::move(path);
  swarm->serving_.uploaded = uploaded;
  // Opened lazily by read_chunk: a file that moved is reported per request.
  return swarm;
}

std::shared_ptr<Swarm> Swarm::download(Services& services, DownloadRecord record) {
  // The hash list moves into the swarm: one copy for the download's life
  // (512 KiB at 16,384 chunks), not one here and one in the record.
  auto swarm = std::shared_ptr<Swarm>(new Swarm(services, std::move(record.manifest)));
  record.manifest = Manifest{};
  swarm->path_ = record.destination;
  swarm->download_ = std::make_unique<Download>(services.io, std::move(record));
  swarm->visibility_known_ = false;
  return swarm;
}

bool Swarm::enter(SwarmState next) {
  using S = SwarmState;
  bool allowed = false;
  switch (state_) {
    case S::idle:
      allowed = next == S::verifying || next == S::downloading || next == S::failed || next == S::stopped;
      break;
    case S::verifying:
      allowed = next == S::downloading || next == S::failed || next == S::stopped;
      break;
    case S::downloading:
      allowed = next == S::finishing || next == S::failed || next == S::stopped;
      break;
    case S::finishing:
      allowed = next == S::seeding || next == S::failed || next == S::stopped;
      break;
    case S::seeding:
      allowed = next == S::stopped;
      break;
    case S::failed:  // a request-file retries
      allowed = next == S::verifying || next == S::downloading || next == S::failed || next == S::stopped;
      break;
    case S::stopped:  // a download asked for again, or a move that failed after the stop
      allowed = next == S::verifying || next == S::downloading || next == S::failed;
      break;
  }
  if (!allowed) return false;
  if (next != S::failed) failure_.reset();
  state_ = next;
  return true;
}

std::string Swarm::state_text() const {
  switch (state_) {
    case SwarmState::idle:
      return "paused";
    case SwarmState::verifying:
      return "verifying";
    case SwarmState::downloading:
      if (!links_.empty()) return "downloading";
      return download_ && download_->wait_for_holders ? "waiting for holders" : "connecting";
    case SwarmState::finishing:
      return "finishing";
    case SwarmState::seeding:
      return "seeding";
    case SwarmState::failed:
      return "failed: " + (failure_ ? failure_->message : std::string("unknown error"));
    case SwarmState::stopped:
      return "stopped";
  }
  return "unknown";
}

std::uint64_t Swarm::have_bytes() const {
  if (have_.all()) return manifest_->size;
  const ChunkIndex last{manifest_->chunk_count() - 1};
  std::uint64_t bytes = static_cast<std::uint64_t>(have_.count()) * manifest_->chunk_size;
  if (have_.test(last)) bytes -= manifest_->chunk_size - manifest_->chunk_length(last);
  return bytes;
}

pb::CentralRequest Swarm::announcement() const {
  pb::CentralRequest request;
  manifest_to_wire(*manifest_, request.mutable_announce()->mutable_manifest());
  if (!complete()) request.mutable_announce()->set_bitfield(have_.to_wire());
  for (const auto& group : groups_) request.mutable_announce()->add_groups(group);
  if (!groups_.empty()) request.set_session(services_.session);
  if (complete() && replicas_) request.mutable_announce()->set_replicas(*replicas_);
  if (cached_) request.mutable_announce()->set_cached(true);
  return request;
}

void Swarm::announce() const {
  announce_with_backoff(std::chrono::seconds(1));
}

void Swarm::announce_with_backoff(std::chrono::milliseconds backoff) const {
  if (!visibility_known_ || state_ == SwarmState::stopped) return;
  std::weak_ptr<const Swarm> weak = weak_from_this();
  services_.central->request(
      announcement(),
      [weak, backoff](std::optional<pb::CentralResponse> response, const std::string&) {
        auto self = weak.lock();
        if (!self || !response) return;
        if (response->has_ok()) self->refused_for_limit_ = false;
        if (response->has_error() && response->error().code() == static_cast<int>(Errc::limit)) {
          // Asking again gets the same answer until this peer holds less.
          if (!self->refused_for_limit_) {
            log::warn("the central server does not list {} ({}): {}", self->manifest_->name, to_hex(self->id_),
                      response->error().message());
          }
          self->refused_for_limit_ = true;
          return;
        }
        if (!response->has_error() || response->error().code() != static_cast<int>(Errc::unavailable)) return;
        if (self->announce_retry_pending_) return;  // a chain already waits
        self->announce_retry_pending_ = true;
        auto timer = std::make_shared<asio::steady_timer>(self->services_.io, backoff);
        timer->async_wait([weak, timer, backoff](const std::error_code& ec) {
          auto again = weak.lock();
          if (!again) return;
          again->announce_retry_pending_ = false;
          if (ec) return;
          again->announce_with_backoff(std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(60)));
        });
      },
      std::chrono::seconds(0));
}

void Swarm::save_uploaded() {
  // Only a shared file has a row to count in; a download's uploads are
  // carried into it when it finishes (SharedRecord.uploaded).
  if (serving_.uploaded_unsaved == 0 || download_) return;
  try {
    services_.state.add_uploaded(id_, serving_.uploaded_unsaved);
    serving_.uploaded_unsaved = 0;
  } catch (const std::exception& e) {
    log::warn("cannot save the upload count of {}: {}", to_hex(id_), e.what());
  }
}

void Swarm::shutdown(bool persist_clean) {
  // Clean only if the state is what we verified: not while the resume check
  // of an unclean stop still runs (no scheduler yet).
  if (downloading() && persist_clean && state_ != SwarmState::finishing && download_->scheduler) save_resume(true);
  save_uploaded();
  enter(SwarmState::stopped);
  if (download_) download_->timer.cancel();
  auto links = links_;
  for (const auto& link : links) link->close("file no longer shared");
  auto pending = pending_links_;
  for (const auto& link : pending) link->close("file no longer shared");
  notify_finished(Failure{Errc::unavailable, "the download was stopped"});
}

// --- links ---------------------------------------------------------------

void Swarm::attach(const std::shared_ptr<PeerLink>& link) {
  pending_links_.erase(link);
  if (state_ == SwarmState::stopped) return link->close("file no longer shared");
  if (link->remote_id() == services_.self) return link->close("connected to ourselves");
  // One link per peer and file. A link we dialled was checked against the
  // registry's peer id; an accepted one only claims its id: the checked one
  // wins, so nobody can push a real holder out by claiming its id first.
  if (auto it = by_key_.find(link->key()); it != by_key_.end()) {
    if (link->verified() && !it->second->verified()) {
      it->second->close("replaced by a verified connection");  // detaches it now
    } else {
      return link->close("duplicate connection");
    }
  }
  if (download_) download_->connecting.erase(link->remote_id());
  links_.insert(link);
  by_key_[link->key()] = link.get();
  if (fetching()) {
    auto& scheduler = *download_->scheduler;
    if (!scheduler.add_peer(link->key(), link->remote_have())) {
      if (scheduler.is_banned(link->key())) return link->close("banned for sending bad data");
    }
    fill(*link);
  }
}

void Swarm::detach(PeerLink& link) {
  for (auto p = pending_links_.begin(); p != pending_links_.end(); ++p) {
    if (p->get() == &link) {
      // Dialled, never got as far as a bitfield: do not redial at once.
      if (download_) {
        download_->connecting.erase(link.remote_id());
        download_->failed_peers[link.remote_id()] = std::chrono::steady_clock::now();
      }
      pending_links_.erase(p);
      break;
    }
  }
  auto it = by_key_.find(link.key());
  if (it != by_key_.end() && it->second == &link) {
    by_key_.erase(it);
    if (download_ && download_->scheduler) {
      download_->scheduler->remove_peer(link.key());
      fill_all();  // its chunks go to the others at once
    }
  }
  for (auto l = links_.begin(); l != links_.end(); ++l) {
    if (l->get() == &link) {
      links_.erase(l);
      break;
    }
  }
}

// --- serving -------------------------------------------------------------

// A complete holder spares its upload for what nobody else has yet, as a
// BitTorrent super-seed does: a chunk that another downloader connected to
// us already has, or that we accepted a request for from one, is answered
// "busy" once per link (the link remembers); the downloader gets it from
// that peer (downloaders link to each other) or asks again, and a repeated
// request is served. So each chunk leaves the seed about once, and the
// seed's upload goes to new chunks. Other seeds do not count: getting a
// chunk from them spares no upload.
bool Swarm::should_defer(const PeerLink& link, ChunkIndex chunk) {
  if (!complete() || links_.size() < 2) return false;
  for (const auto& other : links_) {
    if (other.get() == &link || other->closed() || other->remote_have().all()) continue;
    if (other->remote_have().test(chunk) || other->promised(chunk)) return true;
  }
  return false;
}

void Swarm::read_chunk(ChunkIndex chunk, ReadDone done) {
  const std::uint32_t length = manifest_->chunk_length(chunk);
  const std::uint64_t offset = manifest_->chunk_offset(chunk);
  auto buffer = services_.buffers->acquire(length);
  auto partial = download_ ? download_->partial : nullptr;
  auto reader = serving_.reader;
  const auto path = path_;
  const auto expected = partial || reader || !services_.shared_identity ? std::nullopt : services_.shared_identity(id_);
  // A seed's file is usually in the page cache: read it here, on the network
  // thread, and skip two thread hand-offs (a futex wake there, an eventfd
  // wake back) per chunk. Anything else (not cached, an error to report) goes
  // to the disk pool, which does the whole read again.
  if (!partial && reader) {
    try {
      if (reader->read_cached(offset, std::span(buffer->data(), buffer->size()))) {
        done(buffer, std::nullopt);
        return;
      }
    } catch (const std::exception&) {  // NOLINT(bugprone-empty-catch): the disk pool reports it
    }
  }
  auto self = shared_from_this();
  asio::post(services_.disk, [self, partial, reader, path, expected, offset, buffer, done = std::move(done)]() mutable {
    std::optional<Failure> failure;
    std::shared_ptr<store::ChunkReader> opened;
    try {
      if (partial) {
        partial->read(offset, std::span(buffer->data(), buffer->size()));
      } else {
        if (!reader) opened = reader = std::make_shared<store::ChunkReader>(path, self->manifest_->size, expected);
        reader->read(offset, std::span(buffer->data(), buffer->size()));
      }
    } catch (const std::exception& e) {
      failure = failure_from(e, Errc::io);
    }
    asio::post(self->services_.io, [self, opened, buffer, failure, seeding = !partial, done = std::move(done)] {
      if (opened && !self->serving_.reader && !self->downloading()) self->serving_.reader = opened;
      if (failure && seeding && self->services_.on_unreadable) self->services_.on_unreadable(self->id_);
      done(buffer, failure);
    });
  });
}

void Swarm::on_sent(std::uint64_t bytes) {
  services_.metrics->bytes_up.add(bytes);
  serving_.uploaded += bytes;
  serving_.uploaded_unsaved += bytes;
}

}  // namespace p2pshare::peer
