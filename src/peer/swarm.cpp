#include "peer/swarm.hpp"

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "peer.pb.h"

namespace p2pshare::peer {
namespace {

constexpr std::size_t kMaxPooledBuffers = 64;
// How long the download may have no source before it fails (unless told to wait).
constexpr auto kSourcelessGrace = std::chrono::seconds(3);
// A "busy" answer refreshes the holder list at most this often.
constexpr auto kBusyRefreshGap = std::chrono::milliseconds(500);

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
      have_(manifest_->chunk_count()),
      timer_(services.io) {}

std::shared_ptr<Swarm> Swarm::seed(Services& services, Manifest manifest, std::filesystem::path path,
                                   std::uint64_t uploaded) {
  auto swarm = std::shared_ptr<Swarm>(new Swarm(services, std::move(manifest)));
  swarm->have_ = Bitfield(swarm->manifest_->chunk_count(), true);
  swarm->path_ = std::move(path);
  swarm->uploaded_ = uploaded;
  // Opened lazily by read_chunk: a file that moved is reported per request.
  return swarm;
}

std::shared_ptr<Swarm> Swarm::download(Services& services, DownloadRecord record) {
  // The hash list moves into the swarm: one copy for the download's life
  // (512 KiB at 16,384 chunks), not one here and one in record_.
  auto swarm = std::shared_ptr<Swarm>(new Swarm(services, std::move(record.manifest)));
  record.manifest = Manifest{};
  swarm->path_ = record.destination;
  swarm->record_ = std::move(record);
  swarm->is_download_ = true;
  return swarm;
}

std::uint64_t Swarm::have_bytes() const {
  if (have_.all()) return manifest_->size;
  std::uint64_t bytes = 0;
  const std::uint32_t last = manifest_->chunk_count() - 1;
  bytes = static_cast<std::uint64_t>(have_.count()) * manifest_->chunk_size;
  if (have_.test(ChunkIndex{last})) bytes -= manifest_->chunk_size - manifest_->chunk_length(ChunkIndex{last});
  return bytes;
}

std::string Swarm::state_text() const {
  if (!failure_.empty()) return "failed: " + failure_;
  if (complete() && !partial_) return "seeding";
  if (finishing_) return "finishing";
  if (active_ && links_.empty()) return wait_for_holders_ ? "waiting for holders" : "connecting";
  if (active_) return "downloading";
  return "paused";
}

pb::CentralRequest Swarm::announcement() const {
  pb::CentralRequest request;
  manifest_to_wire(*manifest_, request.mutable_announce()->mutable_manifest());
  if (!complete()) request.mutable_announce()->set_bitfield(have_.to_wire());
  return request;
}

void Swarm::count_upload(std::uint64_t bytes) {
  uploaded_ += bytes;
  uploaded_unsaved_ += bytes;
}

void Swarm::read_chunk(ChunkIndex chunk, std::function<void(BufferPool::Buffer, const std::string&)> done) {
  const std::uint32_t length = manifest_->chunk_length(chunk);
  const std::uint64_t offset = manifest_->chunk_offset(chunk);
  auto buffer = services_.buffers->acquire(length);
  auto partial = partial_;
  auto reader = reader_;
  const auto path = path_;
  const auto expected = partial || reader || !services_.shared_identity ? std::nullopt : services_.shared_identity(id_);
  auto self = shared_from_this();
  asio::post(services_.disk, [self, partial, reader, path, expected, offset, buffer, done = std::move(done)]() mutable {
    std::string error;
    std::shared_ptr<store::ChunkReader> opened;
    try {
      if (partial) {
        partial->read(offset, std::span(buffer->data(), buffer->size()));
      } else {
        if (!reader) opened = reader = std::make_shared<store::ChunkReader>(path, self->manifest_->size, expected);
        reader->read(offset, std::span(buffer->data(), buffer->size()));
      }
    } catch (const std::exception& e) {
      error = e.what();
    }
    asio::post(self->services_.io, [self, opened, buffer, error, seeding = !partial, done = std::move(done)] {
      if (opened && !self->reader_ && !self->partial_) self->reader_ = opened;
      if (!error.empty() && seeding && self->services_.on_unreadable) self->services_.on_unreadable(self->id_);
      done(buffer, error);
    });
  });
}

// --- links ---------------------------------------------------------------

void Swarm::attach(const std::shared_ptr<PeerLink>& link, const Bitfield& remote_have) {
  if (stopped_) return link->close("file no longer shared");
  if (link->remote_id() == services_.self) {
    pending_links_.erase(link);
    return link->close("connected to ourselves");
  }
  // One link per peer and file. A link we dialled was checked against the
  // registry's peer id; an accepted one only claims its id: the checked one
  // wins, so nobody can push a real holder out by claiming its id first.
  if (auto it = by_key_.find(link->key()); it != by_key_.end()) {
    if (link->verified_ && !it->second->verified_) {
      it->second->close("replaced by a verified connection");  // detaches it now
    } else {
      pending_links_.erase(link);
      return link->close("duplicate connection");
    }
  }
  pending_links_.erase(link);
  connecting_.erase(link->remote_id());
  link->remote_have_ = remote_have;
  link->sent_ = Bitfield(manifest_->chunk_count());
  link->deferred_ = Bitfield(manifest_->chunk_count());
  links_.insert(link);
  by_key_[link->key()] = link.get();
  if (scheduler_ && active_) {
    if (!scheduler_->add_peer(link->key(), remote_have)) {
      if (scheduler_->is_banned(link->key())) return link->close("banned for sending bad data");
    }
    fill(*link);
  }
}

void Swarm::detach(PeerLink& link) {
  for (auto p = pending_links_.begin(); p != pending_links_.end(); ++p) {
    if (p->get() == &link) {
      // Dialled, never got as far as a bitfield: do not redial at once.
      connecting_.erase(link.remote_id());
      failed_peers_[link.remote_id()] = std::chrono::steady_clock::now();
      pending_links_.erase(p);
      break;
    }
  }
  auto it = by_key_.find(link.key());
  if (it != by_key_.end() && it->second == &link) {
    by_key_.erase(it);
    if (scheduler_) {
      scheduler_->remove_peer(link.key());
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

std::size_t Swarm::chunk_budget() const {
  // Every chunk asked for ends up in a buffer until it is written: this many
  // at once, whatever the number of peers, bounds the download's memory and
  // slows the requests down to what the disk takes.
  constexpr std::uint64_t kBudgetBytes = 8 * 1024 * 1024;
  return static_cast<std::size_t>(std::clamp<std::uint64_t>(kBudgetBytes / manifest_->chunk_size, 4, 64));
}

void Swarm::fill(PeerLink& link) {
  if (!scheduler_ || !active_ || link.closed()) return;
  const std::size_t used = scheduler_->total_outstanding() + disk_jobs_;
  const std::size_t budget = chunk_budget();
  if (used >= budget) return;
  for (ChunkIndex chunk : scheduler_->next_requests(link.key(), sched::Clock::now(), budget - used)) {
    link.send_request(chunk);
  }
}

void Swarm::fill_all() {
  if (links_.empty()) return;
  // Round robin: when the budget frees one chunk at a time, every peer gets
  // its turn instead of the first in the set taking it each time.
  fill_cursor_ = (fill_cursor_ + 1) % links_.size();
  auto start = std::next(links_.begin(), static_cast<std::ptrdiff_t>(fill_cursor_));
  for (auto it = start; it != links_.end(); ++it) fill(**it);
  for (auto it = links_.begin(); it != start; ++it) fill(**it);
}

void Swarm::on_remote_have(PeerLink& link, ChunkIndex chunk) {
  link.remote_have_.set(chunk);
  if (!scheduler_ || !active_) return;
  scheduler_->on_have(link.key(), chunk);
  fill(link);
}

void Swarm::on_rejected(PeerLink& link, ChunkIndex chunk) {
  if (!scheduler_) return;
  scheduler_->on_rejected(link.key(), chunk);
  fill_all();
}

void Swarm::on_deferred(PeerLink& link, ChunkIndex chunk) {
  if (!scheduler_) return;
  const auto now = sched::Clock::now();
  scheduler_->on_deferred(link.key(), chunk, now);
  fill_all();
  // "Busy" says another downloader has the chunk; if we are not linked to it
  // yet (early in a download, before the first holder refresh found it), the
  // sooner we dial it the fewer chunks we must ask the seed for again.
  if (active_ && now - last_refresh_ >= kBusyRefreshGap) refresh_holders();
}

// A complete holder spares its upload for what nobody else has yet, as a
// BitTorrent super-seed does: a chunk that another downloader connected to
// us already has, or that we accepted a request for from one, is answered "busy" once
// per link; the downloader gets it from that peer (downloaders link to each
// other) or asks again, and a repeated request is served. So each chunk
// leaves the seed about once, and the seed's upload goes to new chunks.
// Other seeds do not count: getting a chunk from them spares no upload.
bool Swarm::should_defer(PeerLink& link, ChunkIndex chunk) {
  if (!complete() || links_.size() < 2 || link.deferred_.test(chunk)) return false;
  for (const auto& other : links_) {
    if (other.get() == &link || other->closed() || other->remote_have_.all()) continue;
    if (other->remote_have_.test(chunk) || other->sent_.test(chunk)) {
      link.deferred_.set(chunk);
      return true;
    }
  }
  return false;
}

bool Swarm::accept_piece(PeerLink& link, ChunkIndex chunk) {
  if (!scheduler_ || !active_) return false;
  auto cancels = scheduler_->on_chunk_arrived(link.key(), chunk, sched::Clock::now());
  if (!cancels) return false;
  for (const auto& cancel : *cancels) {
    auto it = by_key_.find(cancel.peer);
    if (it != by_key_.end()) it->second->send_cancel(cancel.chunk);
  }
  return true;
}

void Swarm::on_payload_lost(ChunkIndex chunk) {
  if (!scheduler_) return;
  scheduler_->on_chunk_lost(chunk);
}

void Swarm::on_payload(PeerLink& link, ChunkIndex chunk, BufferPool::Buffer buffer) {
  const auto from = link.key();
  auto manifest = manifest_;
  auto partial = partial_;
  auto self = shared_from_this();
  ++disk_jobs_;
  asio::post(services_.disk, [self, manifest, partial, buffer, chunk, from] {
    const auto digest = Sha256::digest(std::span<const std::uint8_t>(buffer->data(), buffer->size()));
    const bool ok = digest == manifest->chunk_hashes[chunk.value];
    std::string io_error;
    if (ok) {
      try {
        partial->write(manifest->chunk_offset(chunk), std::span<const std::uint8_t>(buffer->data(), buffer->size()));
      } catch (const std::exception& e) {
        io_error = e.what();
      }
    }
    asio::post(self->services_.io,
               [self, from, chunk, ok, io_error] { self->on_chunk_checked(from, chunk, ok, io_error); });
  });
}

void Swarm::on_chunk_checked(sched::PeerKey from, ChunkIndex chunk, bool hash_ok, const std::string& io_error) {
  --disk_jobs_;
  if (!scheduler_) return;
  if (!hash_ok) {
    log::warn("chunk {} of {} from peer {:016x} failed its hash", chunk.value, to_hex(id_), from);
    if (scheduler_->on_bad_chunk(from, chunk)) {
      log::warn("peer {:016x} banned from {} after {} bad chunks", from, to_hex(id_), scheduler_->strikes(from));
      if (auto it = by_key_.find(from); it != by_key_.end()) it->second->close("banned for sending bad data");
    }
    fill_all();
    return;
  }
  if (!io_error.empty()) {
    scheduler_->on_chunk_lost(chunk);
    fail(io_error);
    return;
  }
  scheduler_->on_chunk_done(chunk);
  have_.set(chunk);
  resume_dirty_ = true;
  for (const auto& link : links_) link->send_have(chunk);
  if (scheduler_->complete()) {
    finish();
    return;
  }
  fill_all();
}

// --- the download's life -------------------------------------------------

void Swarm::add_observer(Observer observer) {
  observers_.push_back(std::move(observer));
}

void Swarm::start_download(bool wait_for_holders) {
  wait_for_holders_ = wait_for_holders || wait_for_holders_;
  // A file of 0 chunks is "complete" before it starts, yet must still be made.
  if (active_ || finishing_ || !is_download_) return;
  failure_.clear();
  stopped_ = false;
  try {
    std::filesystem::create_directories(record_.directory);
    partial_ = std::make_shared<store::PartialFile>(record_.directory, id_, manifest_->size);
  } catch (const std::filesystem::filesystem_error& e) {
    return fail(fmt::format("cannot create {}: {}", record_.directory.string(), e.code().message()));
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  if (partial_->created()) {
    record_.have = Bitfield(manifest_->chunk_count());
  } else if (record_.have.none()) {
    // A partial file with no resume state (a stopped download asked for
    // again): whatever it holds is checked chunk by chunk and reused.
    record_.have = Bitfield(manifest_->chunk_count(), true);
    record_.clean = false;
  }
  have_ = record_.have;
  const bool trusted = record_.clean && !partial_->created() && record_.stamp == partial_->stamp();
  try {
    // From here until the next clean stop, the resume state is not trusted blindly.
    record_.clean = false;
    services_.state.put_download(record_, *manifest_);
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  active_ = true;
  started_ = std::chrono::steady_clock::now();
  bytes_received_ = 0;
  if (trusted || have_.none()) {
    begin_transfer();
  } else {
    verify_resume_state();
  }
}

void Swarm::verify_resume_state() {
  // After an unclean stop the page cache may have lost chunks the state
  // claims: every claimed chunk is read and hashed again before it counts.
  auto self = shared_from_this();
  auto claimed = std::make_shared<Bitfield>(have_);
  auto manifest = manifest_;
  auto partial = partial_;
  log::info("verifying {} chunks of {} claimed by the resume state", claimed->count(), to_hex(id_));
  asio::post(services_.disk, [self, claimed, manifest, partial] {
    Bitfield verified(manifest->chunk_count());
    std::vector<std::uint8_t> buffer(manifest->chunk_size);
    for (std::uint32_t i = 0; i < manifest->chunk_count(); ++i) {
      const ChunkIndex chunk{i};
      if (!claimed->test(chunk)) continue;
      const auto length = manifest->chunk_length(chunk);
      try {
        partial->read(manifest->chunk_offset(chunk), std::span(buffer.data(), length));
      } catch (const std::exception&) {
        continue;
      }
      if (Sha256::digest(std::span<const std::uint8_t>(buffer.data(), length)) == manifest->chunk_hashes[i]) {
        verified.set(chunk);
      }
    }
    asio::post(self->services_.io, [self, verified] {
      if (!self->active_) return;
      if (verified.count() != self->have_.count()) {
        log::warn("{}: {} claimed chunks failed verification and will be fetched again", to_hex(self->id_),
                  self->have_.count() - verified.count());
      }
      self->have_ = verified;
      self->resume_dirty_ = true;
      self->begin_transfer();
    });
  });
}

void Swarm::begin_transfer() {
  auto config = services_.sched_config;
  config.chunk_size = manifest_->chunk_size;
  random_bytes(std::span(reinterpret_cast<std::uint8_t*>(&config.random_seed), sizeof(config.random_seed)));
  scheduler_.emplace(manifest_->chunk_count(), have_, config);
  // Peers that connected to us while we verified.
  for (const auto& link : links_) scheduler_->add_peer(link->key(), link->remote_have_);
  if (complete()) return finish();
  // Tell the central server we are a (partial) holder: others can fetch from us.
  announced_chunks_ = have_.count();
  services_.central->request(
      announcement(), [](auto, const std::string&) {}, std::chrono::seconds(0));
  sourceless_since_ = std::chrono::steady_clock::now();
  last_save_ = sourceless_since_;
  refresh_holders();
  tick();
}

void Swarm::tick() {
  timer_.expires_after(services_.tick);
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec || !self->active_ || !self->scheduler_) return;
    const auto now = std::chrono::steady_clock::now();
    for (auto key : self->scheduler_->stalled_peers(now)) {
      if (auto it = self->by_key_.find(key); it != self->by_key_.end()) it->second->close("stalled");
    }
    // Chunks whose "busy" deferral ran out may be asked again.
    self->fill_all();
    self->notify_progress();
    if (now - self->last_save_ >= std::chrono::seconds(1)) self->save_resume(false);
    if (now - self->last_refresh_ >= self->services_.holder_refresh) {
      self->refresh_holders();
      // Others learn from the central server which chunks we can serve.
      if (self->have_.count() != self->announced_chunks_) {
        self->announced_chunks_ = self->have_.count();
        self->services_.central->request(
            self->announcement(), [](auto, const std::string&) {}, std::chrono::seconds(0));
      }
    }
    // A refresh in flight is not a source: counting it would reset the grace
    // at every refresh and a download with no holder would never fail.
    if (self->scheduler_->any_source() || !self->connecting_.empty() || !self->pending_links_.empty() ||
        self->disk_jobs_ > 0) {
      self->sourceless_since_ = now;
    } else if (now - self->sourceless_since_ > kSourcelessGrace && !self->wait_for_holders_) {
      self->fail(fmt::format("no live holder has the rest of {} ({} of {} chunks here; kept for a later retry)",
                             to_hex(self->id_), self->have_.count(), self->manifest_->chunk_count()));
      return;
    }
    self->tick();
  });
}

void Swarm::refresh_holders() {
  if (refreshing_) return;
  refreshing_ = true;
  last_refresh_ = std::chrono::steady_clock::now();
  pb::CentralRequest request;
  request.mutable_get_file()->set_file_id(to_bytes(id_));
  services_.central->request(std::move(request), [self = shared_from_this()](auto response, const std::string& error) {
    self->refreshing_ = false;
    if (!self->active_) return;
    if (!response || !response->has_file()) {
      log::debug("holder refresh for {} failed: {}", to_hex(self->id_),
                 response && response->has_error() ? response->error().message() : error);
      return;
    }
    const auto now = std::chrono::steady_clock::now();
    for (const auto& holder : response->file().holders()) {
      auto peer = peer_id_from_bytes(holder.peer_id());
      if (!peer || *peer == self->services_.self || holder.port() == 0 || holder.port() > 65535) continue;
      if (self->by_key_.count(key_of(*peer)) || self->connecting_.count(*peer)) continue;
      if (self->links_.size() + self->connecting_.size() >= self->services_.max_links_per_file) break;
      if (auto f = self->failed_peers_.find(*peer);
          f != self->failed_peers_.end() && now - f->second < std::chrono::seconds(5)) {
        continue;
      }
      if (self->scheduler_ && self->scheduler_->is_banned(key_of(*peer))) continue;
      self->connect_to(*peer, holder.host(), static_cast<std::uint16_t>(holder.port()));
    }
  });
}

void Swarm::connect_to(const PeerId& peer, const std::string& host, std::uint16_t port) {
  std::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return;
  connecting_.insert(peer);
  auto socket = std::make_shared<asio::ip::tcp::socket>(services_.io);
  auto deadline = std::make_shared<asio::steady_timer>(services_.io, std::chrono::seconds(5));
  deadline->async_wait([socket](const std::error_code& e) {
    if (!e) {
      std::error_code ignored;
      socket->close(ignored);
    }
  });
  auto self = shared_from_this();
  socket->async_connect(asio::ip::tcp::endpoint(address, port),
                        [self, socket, deadline, peer](const std::error_code& e) {
                          deadline->cancel();
                          if (e || !self->active_) {
                            self->connecting_.erase(peer);
                            self->failed_peers_[peer] = std::chrono::steady_clock::now();
                            return;
                          }
                          wire::tune_socket(*socket);
                          wire::ConnectionOptions options;
                          options.limits = protocol::kPeerLimits;
                          auto connection = wire::Connection::create(std::move(*socket), options);
                          PeerLink::open(self->services_, connection, self, peer);
                        });
}

void Swarm::notify_progress() {
  if (observers_.empty()) return;
  pb::Progress progress;
  progress.set_have_bytes(have_bytes());
  progress.set_size(manifest_->size);
  progress.set_peers(static_cast<std::uint32_t>(links_.size()));
  progress.set_bytes_received(bytes_received_);
  for (const auto& o : observers_) o.progress(progress);
}

void Swarm::save_uploaded() {
  // Only a shared file has a row to count in; a download's uploads are
  // carried into it when it finishes (SharedRecord.uploaded).
  if (uploaded_unsaved_ == 0 || partial_ || is_download_) return;
  try {
    services_.state.add_uploaded(id_, uploaded_unsaved_);
    uploaded_unsaved_ = 0;
  } catch (const std::exception& e) {
    log::warn("cannot save the upload count of {}: {}", to_hex(id_), e.what());
  }
}

void Swarm::discard_partial() {
  if (partial_) partial_->remove();
  partial_.reset();
}

void Swarm::save_resume(bool clean) {
  if (!partial_ || saving_) return;
  if (!resume_dirty_ && !clean) return;
  last_save_ = std::chrono::steady_clock::now();
  resume_dirty_ = false;
  // Only what was written before the sync is recorded: snapshot, sync, then save.
  auto snapshot = have_;
  auto partial = partial_;
  if (clean) {
    try {
      partial->sync();
      services_.state.update_resume(id_, snapshot, true, partial->stamp());
    } catch (const std::exception& e) {
      log::error("cannot save the resume state of {}: {}", to_hex(id_), e.what());
    }
    return;
  }
  saving_ = true;
  auto self = shared_from_this();
  asio::post(services_.disk, [self, partial, snapshot] {
    std::string error;
    try {
      partial->sync();
    } catch (const std::exception& e) {
      error = e.what();
    }
    asio::post(self->services_.io, [self, snapshot, error, partial] {
      self->saving_ = false;
      if (!error.empty()) {
        log::error("{}", error);
        return;
      }
      if (self->partial_ != partial) return;
      try {
        self->services_.state.update_resume(self->id_, snapshot, false, partial->stamp());
      } catch (const std::exception& e) {
        log::error("cannot save the resume state of {}: {}", to_hex(self->id_), e.what());
      }
    });
  });
}

void Swarm::finish() {
  if (finishing_) return;
  finishing_ = true;
  notify_progress();
  auto self = shared_from_this();
  auto partial = partial_;
  const auto destination = record_.destination;
  const bool replace = record_.replace;
  asio::post(services_.disk, [self, partial, destination, replace] {
    std::string error;
    std::filesystem::path final_path;
    try {
      final_path = partial->finish(destination, replace);
    } catch (const std::exception& e) {
      error = e.what();
    }
    asio::post(self->services_.io, [self, final_path, error] {
      self->finishing_ = false;
      if (!error.empty()) return self->fail(error);
      self->active_ = false;
      self->is_download_ = false;
      self->timer_.cancel();
      self->path_ = final_path;
      self->partial_.reset();
      self->reader_.reset();
      self->scheduler_.reset();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - self->started_).count();
      try {
        SharedRecord shared{*self->manifest_, final_path, self->uploaded_};
        self->services_.state.put_shared(shared);
        self->services_.state.remove_download(self->id_);
      } catch (const std::exception& e) {
        log::error("cannot record {} as shared: {}", final_path.string(), e.what());
      }
      log::info("downloaded {} to {} in {:.2f} s", to_hex(self->id_), final_path.string(), seconds);
      self->services_.central->request(
          self->announcement(), [](auto, const std::string&) {}, std::chrono::seconds(0));
      pb::Downloaded done;
      done.set_file_id(to_bytes(self->id_));
      done.set_path(final_path.string());
      done.set_size(self->manifest_->size);
      done.set_bytes_received(self->bytes_received_);
      done.set_seconds(seconds);
      auto observers = std::move(self->observers_);
      self->observers_.clear();
      for (const auto& o : observers) o.finished(&done, "");
    });
  });
}

void Swarm::fail(const std::string& error) {
  log::warn("download of {} failed: {}", to_hex(id_), error);
  failure_ = error;
  // A retry in this process starts from what we have now, not from what the
  // record held when the download first started.
  if (scheduler_) record_.have = have_;
  if (partial_ && scheduler_) save_resume(false);
  active_ = false;
  timer_.cancel();
  scheduler_.reset();
  auto observers = std::move(observers_);
  observers_.clear();
  for (const auto& o : observers) o.finished(nullptr, error);
}

void Swarm::shutdown(bool persist_clean) {
  // Clean only if the state is what we verified: not while the resume check
  // of an unclean stop still runs (scheduler_ not yet made).
  if (partial_ && persist_clean && !finishing_ && scheduler_) save_resume(true);
  save_uploaded();
  stopped_ = true;
  active_ = false;
  timer_.cancel();
  auto links = links_;
  for (const auto& link : links) link->close("file no longer shared");
  auto pending = pending_links_;
  for (const auto& link : pending) link->close("file no longer shared");
  auto observers = std::move(observers_);
  observers_.clear();
  for (const auto& o : observers) o.finished(nullptr, "the download was stopped");
}

}  // namespace p2pshare::peer
