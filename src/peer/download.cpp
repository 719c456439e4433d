// Swarm: the download's life (see download.hpp and swarm.hpp): start and
// resume, the requests, the chunks' way to disk, holder refresh, finish.
#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "peer/swarm.hpp"

namespace p2pshare::peer {
namespace {

// How long the download may have no source before it fails (unless told to wait).
constexpr auto kSourcelessGrace = std::chrono::seconds(3);
// A "busy" answer refreshes the holder list at most this often.
constexpr auto kBusyRefreshGap = std::chrono::milliseconds(500);

}  // namespace

void Swarm::add_observer(Observer observer) {
  if (!download_) return;
  download_->observers.push_back(std::move(observer));
}

void Swarm::set_stream_position(std::uint64_t token, std::optional<std::uint32_t> next) {
  if (!download_) return;
  if (next) {
    download_->streams[token] = *next;
  } else {
    download_->streams.erase(token);
  }
  fill_all();
}

void Swarm::set_sequential() {
  if (download_) download_->sequential = true;
}

std::optional<sched::Window> Swarm::window() {
  auto& download = *download_;
  // Far enough ahead that the budget of chunks in flight, not the window,
  // limits the rate; on disk, not in memory.
  constexpr std::uint64_t kReadAheadBytes = std::uint64_t{16} * 1024 * 1024;
  const auto length =
      static_cast<std::uint32_t>(std::max<std::uint64_t>(2 * chunk_budget(), kReadAheadBytes / manifest_->chunk_size));
  if (!download.streams.empty()) {
    std::uint32_t first = download.streams.begin()->second;
    for (const auto& [token, next] : download.streams) first = std::min(first, next);
    return sched::Window{ChunkIndex{first}, length, true};
  }
  // A gateway reader (Swarm::prioritize): its chunks first, then rarest first.
  const auto [first, end] = download.priority;
  if (first.value < end.value) return sched::Window{first, end.value - first.value, false};
  if (!download.sequential) return std::nullopt;
  while (download.first_missing < manifest_->chunk_count() && have_.test(ChunkIndex{download.first_missing})) {
    ++download.first_missing;
  }
  return sched::Window{ChunkIndex{download.first_missing}, length, false};
}

void Swarm::prioritize(ChunkIndex first, ChunkIndex end) {
  if (!download_) return;
  download_->priority = {first, end};
  if (!download_->scheduler) return;
  fill_all();
}

void Swarm::add_chunk_tap(ChunkTap tap) {
  chunk_taps_.push_back(std::move(tap));
}

void Swarm::tap_chunk(ChunkIndex chunk, const BufferPool::Buffer& buffer) {
  std::erase_if(chunk_taps_, [&](const ChunkTap& tap) { return !tap(chunk, buffer); });
}

void Swarm::notify_finished(const DownloadOutcome& outcome) {
  if (!download_) return;
  auto observers = std::move(download_->observers);
  download_->observers.clear();
  for (const auto& o : observers) o.finished(outcome);
}

void Swarm::notify_progress() {
  if (!download_ || download_->observers.empty()) return;
  pb::Progress progress;
  progress.set_have_bytes(have_bytes());
  progress.set_size(manifest_->size);
  progress.set_peers(static_cast<std::uint32_t>(links_.size()));
  progress.set_bytes_received(download_->bytes_received);
  for (const auto& o : download_->observers) o.progress(progress);
}

void Swarm::discard_partial() {
  if (!download_) return;
  if (download_->partial) download_->partial->remove();
  download_->partial.reset();
  download_->writer.reset();
}

void Swarm::start_download(bool wait_for_holders) {
  if (!download_) return;  // a seed
  auto& download = *download_;
  download.wait_for_holders = wait_for_holders || download.wait_for_holders;
  if (state_ == SwarmState::verifying || state_ == SwarmState::downloading || state_ == SwarmState::finishing) return;
  auto& record = download.record;
  try {
    std::filesystem::create_directories(record.directory);
    download.partial = std::make_shared<store::PartialFile>(record.directory, id_, manifest_->size);
    download.writer = std::make_shared<store::ChunkWriter>(download.partial);
  } catch (const std::filesystem::filesystem_error& e) {
    return fail(Failure{Errc::io, fmt::format("cannot create {}: {}", record.directory.string(), e.code().message())});
  } catch (const std::exception& e) {
    return fail(failure_from(e, Errc::io));
  }
  if (download.partial->created()) {
    record.have = Bitfield(manifest_->chunk_count());
  } else if (record.have.none()) {
    // A partial file with no resume state (a stopped download asked for
    // again): whatever it holds is checked chunk by chunk and reused.
    record.have = Bitfield(manifest_->chunk_count(), true);
    record.clean = false;
  }
  have_ = record.have;
  // With other partial files of this id in the folder (other peer-servers'
  // downloads), a matching stamp may be theirs: verify instead.
  const bool trusted = record.clean && !download.partial->created() && download.partial->alone() &&
                       record.stamp == download.partial->stamp();
  try {
    // From here until the next clean stop, the resume state is not trusted blindly.
    record.clean = false;
    services_.state.put_download(record, *manifest_);
  } catch (const std::exception& e) {
    return fail(failure_from(e, Errc::io));
  }
  download.started = std::chrono::steady_clock::now();
  download.bytes_received = 0;
  if (trusted || have_.none()) {
    enter(SwarmState::downloading);
    begin_transfer();
  } else {
    enter(SwarmState::verifying);
    verify_resume_state();
  }
}

void Swarm::verify_resume_state() {
  // After an unclean stop the page cache may have lost chunks the state
  // claims: every claimed chunk is read and hashed again before it counts.
  auto self = shared_from_this();
  auto claimed = std::make_shared<Bitfield>(have_);
  auto manifest = manifest_;
  auto partial = download_->partial;
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
        continue;  // unreadable: fetched again, like a chunk that fails its hash
      }
      if (Sha256::digest(std::span<const std::uint8_t>(buffer.data(), length)) == manifest->chunk_hashes[i]) {
        verified.set(chunk);
      }
    }
    asio::post(self->services_.io, [self, verified] {
      if (self->state_ != SwarmState::verifying) return;
      if (verified.count() != self->have_.count()) {
        log::warn("{}: {} claimed chunks failed verification and will be fetched again", to_hex(self->id_),
                  self->have_.count() - verified.count());
      }
      self->have_ = verified;
      self->download_->resume_dirty = true;
      self->enter(SwarmState::downloading);
      self->begin_transfer();
    });
  });
}

void Swarm::begin_transfer() {
  auto& download = *download_;
  auto config = services_.sched_config;
  config.chunk_size = manifest_->chunk_size;
  random_bytes(std::span(reinterpret_cast<std::uint8_t*>(&config.random_seed), sizeof(config.random_seed)));
  download.scheduler.emplace(manifest_->chunk_count(), have_, config);
  // Peers that connected to us while we verified.
  for (const auto& link : links_) download.scheduler->add_peer(link->key(), link->remote_have());
  if (complete()) return finish();
  // Tell the central server we are a (partial) holder: others can fetch from us.
  download.announced_chunks = have_.count();
  announce();
  download.sourceless_since = std::chrono::steady_clock::now();
  download.last_save = download.sourceless_since;
  refresh_holders();
  tick();
}

// --- requests ------------------------------------------------------------

std::size_t Swarm::chunk_budget() const {
  // Every chunk asked for ends up in a buffer until it is written: this many
  // at once, whatever the number of peers, bounds the download's memory and
  // slows the requests down to what the disk takes. 6 MiB (24 chunks of
  // 256 KiB): 1 GiB from one seed on loopback took 1.47 s against 1.39 s
  // with 8 MiB, and the peer-server's peak RSS 22-23 MiB against 24-25 MiB
  // (bench/single_ab.py, docs/benchmarks.md): the memory bound holds.
  constexpr std::uint64_t kBudgetBytes = std::uint64_t{6} * 1024 * 1024;
  return static_cast<std::size_t>(std::clamp<std::uint64_t>(kBudgetBytes / manifest_->chunk_size, 4, 64));
}

void Swarm::fill(PeerLink& link) {
  if (!fetching() || link.closed()) return;
  auto& scheduler = *download_->scheduler;
  const std::size_t used = scheduler.total_outstanding() + download_->disk_jobs;
  const std::size_t budget = chunk_budget();
  if (used >= budget) return;
  scheduler.set_window(window());
  for (ChunkIndex chunk : scheduler.next_requests(link.key(), sched::Clock::now(), budget - used)) {
    link.send_request(chunk);
  }
}

void Swarm::fill_all() {
  if (links_.empty() || !download_) return;
  // Round robin: when the budget frees one chunk at a time, every peer gets
  // its turn instead of the first in the set taking it each time.
  download_->fill_cursor = (download_->fill_cursor + 1) % links_.size();
  auto start = std::next(links_.begin(), static_cast<std::ptrdiff_t>(download_->fill_cursor));
  for (auto it = start; it != links_.end(); ++it) fill(**it);
  for (auto it = links_.begin(); it != start; ++it) fill(**it);
}

void Swarm::on_remote_have(PeerLink& link, ChunkIndex chunk) {
  if (!fetching()) return;
  download_->scheduler->on_have(link.key(), chunk);
  fill(link);
}

void Swarm::on_rejected(PeerLink& link, ChunkIndex chunk) {
  if (!download_ || !download_->scheduler) return;
  download_->scheduler->on_rejected(link.key(), chunk);
  fill_all();
}

void Swarm::on_deferred(PeerLink& link, ChunkIndex chunk) {
  if (!download_ || !download_->scheduler) return;
  const auto now = sched::Clock::now();
  download_->scheduler->on_deferred(link.key(), chunk, now);
  fill_all();
  // "Busy" says another downloader has the chunk; if we are not linked to it
  // yet (early in a download, before the first holder refresh found it), the
  // sooner we dial it the fewer chunks we must ask the seed for again.
  if (state_ == SwarmState::downloading && now - download_->last_refresh >= kBusyRefreshGap) refresh_holders();
}

// --- the chunk's way to disk -------------------------------------------

bool Swarm::on_piece_header(PeerLink& link, ChunkIndex chunk) {
  if (!fetching()) return false;
  auto cancels = download_->scheduler->on_chunk_arrived(link.key(), chunk, sched::Clock::now());
  if (!cancels) return false;
  for (const auto& cancel : *cancels) {
    auto it = by_key_.find(cancel.peer);
    if (it != by_key_.end()) it->second->send_cancel(cancel.chunk);
  }
  return true;
}

void Swarm::on_received(std::uint64_t bytes) {
  services_.metrics->bytes_down.add(bytes);
  if (download_) download_->bytes_received += bytes;
}

void Swarm::on_payload_lost(ChunkIndex chunk) {
  if (!download_ || !download_->scheduler) return;
  download_->scheduler->on_chunk_lost(chunk);
}

void Swarm::on_payload(PeerLink& link, ChunkIndex chunk, BufferPool::Buffer buffer) {
  if (!download_ || !download_->partial) return;
  const auto from = link.key();
  auto manifest = manifest_;
  auto writer = download_->writer;
  auto self = shared_from_this();
  ++download_->disk_jobs;
  const auto arrived = std::chrono::steady_clock::now();
  // Any disk thread hashes; the writer gathers verified neighbours into one
  // write (store::ChunkWriter), so hashing never waits on the disk.
  asio::post(services_.disk, [self, manifest, writer, buffer, chunk, from, arrived] {
    const auto digest = Sha256::digest(std::span<const std::uint8_t>(buffer->data(), buffer->size()));
    if (digest != manifest->chunk_hashes[chunk.value]) {
      asio::post(self->services_.io, [self, from, chunk] { self->on_chunk_checked(from, chunk, false, std::nullopt); });
      return;
    }
    writer->submit(manifest->chunk_offset(chunk), buffer,
                   [self, from, chunk, arrived, buffer](std::optional<Failure> write_error) {
                     self->services_.metrics->chunk_seconds.observe(
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - arrived).count());
                     asio::post(self->services_.io, [self, from, chunk, buffer, write_error = std::move(write_error)] {
                       const bool written = !write_error;
                       self->on_chunk_checked(from, chunk, true, write_error);
                       if (written) self->tap_chunk(chunk, buffer);
                     });
                   });
  });
}

void Swarm::on_chunk_checked(sched::PeerKey from, ChunkIndex chunk, bool hash_ok, std::optional<Failure> write_error) {
  if (!download_) return;
  --download_->disk_jobs;
  if (!download_->scheduler) return;
  auto& scheduler = *download_->scheduler;
  if (!hash_ok) {
    services_.metrics->chunks_failed.add();
    log::warn("chunk {} of {} from peer {:016x} failed its hash", chunk.value, to_hex(id_), from);
    if (scheduler.on_bad_chunk(from, chunk)) {
      services_.metrics->bans.add();
      log::warn("peer {:016x} banned from {} after {} bad chunks", from, to_hex(id_), scheduler.strikes(from));
      if (auto it = by_key_.find(from); it != by_key_.end()) it->second->close("banned for sending bad data");
    }
    fill_all();
    return;
  }
  if (write_error) {
    scheduler.on_chunk_lost(chunk);
    fail(std::move(*write_error));
    return;
  }
  scheduler.on_chunk_done(chunk);
  have_.set(chunk);
  services_.metrics->chunks_verified.add();
  download_->resume_dirty = true;
  for (const auto& link : links_) link->send_have(chunk);
  for (const auto& o : download_->observers) {
    if (o.chunk_done) o.chunk_done(chunk);
  }
  if (!download_ || !download_->scheduler) return;  // an observer stopped it
  if (scheduler.complete()) {
    finish();
    return;
  }
  fill_all();
}

// --- holders -------------------------------------------------------------

void Swarm::tick() {
  download_->timer.expires_after(services_.tick);
  download_->timer.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec || !self->fetching()) return;
    auto& download = *self->download_;
    auto& scheduler = *download.scheduler;
    const auto now = std::chrono::steady_clock::now();
    for (auto key : scheduler.stalled_peers(now)) {
      if (auto it = self->by_key_.find(key); it != self->by_key_.end()) it->second->close("stalled");
    }
    // Chunks whose "busy" deferral ran out may be asked again.
    self->fill_all();
    self->notify_progress();
    if (now - download.last_save >= std::chrono::seconds(1)) self->save_resume(false);
    if (now - download.last_refresh >= self->services_.holder_refresh) {
      self->refresh_holders();
      // Others learn from the central server which chunks we can serve.
      if (self->have_.count() != download.announced_chunks) {
        download.announced_chunks = self->have_.count();
        self->announce();
      }
    }
    // A refresh in flight is not a source: counting it would reset the grace
    // at every refresh and a download with no holder would never fail.
    if (scheduler.any_source() || !download.connecting.empty() || !self->pending_links_.empty() ||
        download.disk_jobs > 0) {
      download.sourceless_since = now;
    } else if (now - download.sourceless_since > kSourcelessGrace && !download.wait_for_holders) {
      self->fail(Failure{Errc::no_holders,
                         fmt::format("no live holder has the rest of {} ({} of {} chunks here; kept for a later retry)",
                                     to_hex(self->id_), self->have_.count(), self->manifest_->chunk_count())});
      return;
    }
    self->tick();
  });
}

void Swarm::refresh_holders() {
  if (download_->refreshing) return;
  download_->refreshing = true;
  download_->last_refresh = std::chrono::steady_clock::now();
  pb::CentralRequest request;
  request.mutable_get_file()->set_file_id(to_bytes(id_));
  if (!services_.session.empty()) request.set_session(services_.session);
  services_.central->request(std::move(request), [self = shared_from_this()](auto response, const std::string& error) {
    if (!self->download_) return;  // finished meanwhile
    auto& download = *self->download_;
    download.refreshing = false;
    if (self->state_ != SwarmState::downloading) return;
    if (!response || !response->has_file()) {
      log::debug("holder refresh for {} failed: {}", to_hex(self->id_),
                 response && response->has_error() ? response->error().message() : error);
      return;
    }
    const bool first_answer = !self->visibility_known_;
    self->visibility_known_ = true;
    if (!response->file().capabilities().empty()) {
      // Renewed well ahead of expiry (each refresh brings fresh ones): the
      // holders we are linked to get them too.
      self->capabilities_.assign(response->file().capabilities().begin(), response->file().capabilities().end());
      if (self->capabilities_.size() > 8) self->capabilities_.resize(8);
      // A download of a group's file becomes a share in the same groups.
      self->groups_.clear();
      for (const auto& capability : self->capabilities_) {
        pb::CapabilityBody body;
        if (body.ParseFromString(capability.body())) self->groups_.push_back(body.group());
      }
      for (const auto& link : self->links_) link->send_renew(self->capabilities_);
    }
    if (first_answer) self->announce();
    const auto now = std::chrono::steady_clock::now();
    for (const auto& holder : response->file().holders()) {
      auto peer = peer_id_from_bytes(holder.peer_id());
      if (!peer || *peer == self->services_.self || holder.port() == 0 || holder.port() > 65535) continue;
      if (self->by_key_.count(key_of(*peer)) || download.connecting.count(*peer)) continue;
      if (self->links_.size() + download.connecting.size() >= self->services_.max_links_per_file) break;
      if (auto f = download.failed_peers.find(*peer);
          f != download.failed_peers.end() && now - f->second < std::chrono::seconds(5)) {
        continue;
      }
      if (download.scheduler && download.scheduler->is_banned(key_of(*peer))) continue;
      self->connect_to(*peer, holder.host(), static_cast<std::uint16_t>(holder.port()));
    }
  });
}

void Swarm::connect_to(const PeerId& peer, const std::string& host, std::uint16_t port) {
  std::error_code ec;
  const auto address = asio::ip::make_address(host, ec);
  if (ec) return;
  download_->connecting.insert(peer);
  auto socket = std::make_shared<asio::ip::tcp::socket>(services_.io);
  auto deadline = std::make_shared<asio::steady_timer>(services_.io, std::chrono::seconds(5));
  deadline->async_wait([socket](const std::error_code& e) {
    if (!e) {
      std::error_code ignored;
      socket->close(ignored);
    }
  });
  auto self = shared_from_this();
  socket->async_connect(
      asio::ip::tcp::endpoint(address, port), [self, socket, deadline, peer](const std::error_code& e) {
        deadline->cancel();
        if (!self->download_) return;  // finished meanwhile
        if (e || self->state_ != SwarmState::downloading) {
          self->download_->connecting.erase(peer);
          self->download_->failed_peers[peer] = std::chrono::steady_clock::now();
          return;
        }
        wire::tune_socket(*socket);
        wire::ConnectionOptions options;
        options.limits = protocol::kPeerLimits;
        auto connection =
            wire::Connection::create(std::move(*socket), *self->services_.client_tls, tls::Side::client, options);
        auto link = PeerLink::open(self->services_, connection, self, peer);
        if (link->closed()) {  // gone before it could be counted as pending: never detached from there
          self->download_->connecting.erase(peer);
          self->download_->failed_peers[peer] = std::chrono::steady_clock::now();
          return;
        }
        self->pending_links_.insert(link);
      });
}

// --- resume state and the end --------------------------------------------

void Swarm::save_resume(bool clean) {
  if (!downloading() || download_->saving) return;
  auto& download = *download_;
  if (!download.resume_dirty && !clean) return;
  download.last_save = std::chrono::steady_clock::now();
  download.resume_dirty = false;
  // Only what was written before the sync is recorded: snapshot, sync, then save.
  auto snapshot = have_;
  auto partial = download.partial;
  if (clean) {
    try {
      partial->sync();
      services_.state.update_resume(id_, snapshot, true, partial->stamp());
    } catch (const std::exception& e) {
      log::error("cannot save the resume state of {}: {}", to_hex(id_), e.what());
    }
    return;
  }
  download.saving = true;
  auto self = shared_from_this();
  asio::post(services_.disk, [self, partial, snapshot] {
    std::optional<Failure> failure;
    try {
      partial->sync();
    } catch (const std::exception& e) {
      failure = failure_from(e, Errc::io);
    }
    asio::post(self->services_.io, [self, snapshot, failure, partial] {
      if (!self->download_) return;  // finished meanwhile
      self->download_->saving = false;
      if (failure) {
        log::error("{}", failure->message);
        return;
      }
      if (self->download_->partial != partial) return;
      try {
        self->services_.state.update_resume(self->id_, snapshot, false, partial->stamp());
      } catch (const std::exception& e) {
        log::error("cannot save the resume state of {}: {}", to_hex(self->id_), e.what());
      }
    });
  });
}

void Swarm::finish() {
  if (!enter(SwarmState::finishing)) return;
  notify_progress();
  auto self = shared_from_this();
  auto partial = download_->partial;
  const auto destination = download_->record.destination;
  const bool replace = download_->record.replace;
  asio::post(services_.disk, [self, partial, destination, replace] {
    std::optional<Failure> failure;
    std::filesystem::path final_path;
    try {
      final_path = partial->finish(destination, replace);
    } catch (const std::exception& e) {
      failure = failure_from(e, Errc::io);
    }
    asio::post(self->services_.io, [self, final_path, failure] {
      if (failure) return self->fail(*failure);
      // The file is complete and in place: recorded as shared even if the
      // swarm was stopped meanwhile (a peer-server shutting down), or the
      // next start would fetch it again.
      self->download_->timer.cancel();
      auto observers = std::move(self->download_->observers);
      const auto started = self->download_->started;
      const auto bytes_received = self->download_->bytes_received;
      self->download_.reset();
      self->enter(SwarmState::seeding);
      self->path_ = final_path;
      self->serving_.reader.reset();
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      try {
        SharedRecord shared{*self->manifest_, final_path, self->serving_.uploaded, self->groups_};
        self->services_.state.put_shared(shared);
        self->services_.state.remove_download(self->id_);
      } catch (const std::exception& e) {
        log::error("cannot record {} as shared: {}", final_path.string(), e.what());
      }
      log::info("downloaded {} to {} in {:.2f} s", to_hex(self->id_), final_path.string(), seconds);
      self->announce();
      pb::Downloaded done;
      done.set_file_id(to_bytes(self->id_));
      done.set_path(final_path.string());
      done.set_size(self->manifest_->size);
      done.set_bytes_received(bytes_received);
      done.set_seconds(seconds);
      const DownloadOutcome outcome = done;
      for (const auto& o : observers) o.finished(outcome);
    });
  });
}

void Swarm::fail(Failure failure) {
  log::warn("download of {} failed: {}", to_hex(id_), failure.message);
  auto& download = *download_;
  // A retry in this process starts from what we have now, not from what the
  // record held when the download first started.
  if (download.scheduler) {
    download.record.have = have_;
    if (download.partial) save_resume(false);
  }
  download.timer.cancel();
  download.scheduler.reset();
  if (enter(SwarmState::failed)) failure_ = failure;
  notify_finished(failure);
}

}  // namespace p2pshare::peer
