#include "peer/stream.hpp"

#include <algorithm>
#include <map>
#include <optional>

#include "control.pb.h"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"

namespace p2pshare::peer {
namespace {

// One StreamData answer carries at most this much: well under the control
// plane's 4 MiB message limit whatever the chunk size.
constexpr std::size_t kPieceBytes = protocol::kStreamPieceMax;
// The next chunk is read only below this many unsent bytes.
constexpr std::size_t kQueuedBytes = std::size_t{4} << 20;
// Chunks held for sending (taken from the download as it verifies them, or
// being read back from the file), ahead of the one sent next: at most this
// many bytes, but always the next one the stream needs. As much as the
// read-ahead window the download fetches for a stream (Swarm::window), so
// a reader slower than the download still gets every chunk from the tap,
// none from the disk.
constexpr std::uint64_t kHeldBytes = std::uint64_t{16} << 20;
// A reader may pause (a player paused) far longer than a write deadline
// meant for a dead peer.
constexpr auto kStreamWriteTimeout = std::chrono::hours(24);

std::uint64_t next_token() {
  static std::uint64_t last = 0;  // network thread only
  return ++last;
}

class Stream : public std::enable_shared_from_this<Stream> {
 public:
  Stream(const std::shared_ptr<wire::Connection>& connection, std::shared_ptr<Swarm> swarm, bool payloads)
      : connection_(connection), swarm_(std::move(swarm)), token_(next_token()), payloads_(payloads) {}

  void start() {
    auto c = connection_.lock();
    if (!c) return;
    wire::Timeouts quiet;
    quiet.idle = std::chrono::hours(24 * 365);
    quiet.write = kStreamWriteTimeout;
    c->set_timeouts(quiet);
    // The connection keeps the stream alive (the stream holds it weakly).
    c->set_on_sent([self = shared_from_this()] { self->pump(); });
    if (!swarm_->complete()) {
      Observer observer;
      // Every tick: a reader that went away releases the window, and the
      // download goes on by itself like any request-file whose client left.
      // Otherwise a look at what became ready (a chunk another way than
      // through the tap, e.g. verified from a resume state).
      observer.progress = [self = shared_from_this()](const pb::Progress&) {
        if (self->gone()) return self->release();
        self->pump();
      };
      // Each chunk the download verifies and writes comes to the tap with
      // its buffer (right after the swarm marks it had): taken from there,
      // not read back from the partial file, which is written O_DIRECT and
      // would be read from the disk.
      swarm_->add_chunk_tap([weak = weak_from_this()](ChunkIndex chunk, const BufferPool::Buffer& buffer) {
        auto self = weak.lock();
        return self && self->on_tap(chunk, buffer);
      });
      observer.finished = [self = shared_from_this()](const DownloadOutcome& outcome) {
        self->outcome_ = outcome;
        self->pump();
      };
      swarm_->set_stream_position(token_, next_);
      swarm_->add_observer(std::move(observer));
    }
    pump();
  }

 private:
  bool gone() const {
    auto c = connection_.lock();
    return !c || c->closed();
  }

  void release() {
    if (released_) return;
    released_ = true;
    swarm_->set_stream_position(token_, std::nullopt);
  }

  // A chunk is taken in (tapped or read) when it fits in kHeldBytes, or
  // when it is the one to send next (chunks tapped further on must not keep
  // it out).
  bool may_hold(std::uint32_t index) const {
    return index == next_ || held_bytes_ + swarm_->manifest().chunk_length(ChunkIndex{index}) <= kHeldBytes;
  }

  // A chunk the download just verified and wrote. False: tap no more.
  bool on_tap(ChunkIndex chunk, const BufferPool::Buffer& buffer) {
    if (ended_ || released_ || gone()) return false;
    if (chunk.value >= next_read_ && !ready_.contains(chunk.value) && may_hold(chunk.value)) {
      held_bytes_ += buffer->size();
      ready_.emplace(chunk.value, buffer);
      pump();
    }
    return !ended_;
  }

  // Sends the chunks in hand in order, then reads the next ones that the
  // tap did not bring (several at once, within kHeldBytes) from the file.
  void pump() {
    auto c = connection_.lock();
    if (!c || c->closed()) return release();
    if (ended_) return;
    if (const auto* failure = outcome_ ? std::get_if<Failure>(&*outcome_) : nullptr) {
      return end(*c, error(failure->code, failure->message));
    }
    // Sent only below kQueuedBytes unsent: what is sent moves the download's
    // window on, so a reader that stalls must stop it here.
    for (auto ready = ready_.find(next_); ready != ready_.end() && c->queued_bytes() < kQueuedBytes;
         ready = ready_.find(next_)) {
      send_chunk(*c, ready->second);
      held_bytes_ -= ready->second->size();
      ready_.erase(ready);
      ++next_;
      // A chunk that came from the tap was sent without being read: the
      // reads go on after it (chunks in [next_, next_read_) are in hand or
      // being read).
      next_read_ = std::max(next_read_, next_);
      if (!released_ && !swarm_->complete()) swarm_->set_stream_position(token_, next_);
    }
    const auto& manifest = swarm_->manifest();
    const auto count = manifest.chunk_count();
    if (next_ >= count) {
      if (!swarm_->complete() || swarm_->state() != SwarmState::seeding) return;  // Downloaded comes with finished
      return end(*c, downloaded());
    }
    while (next_read_ < count && c->queued_bytes() < kQueuedBytes) {
      if (ready_.contains(next_read_)) {  // tapped
        ++next_read_;
        continue;
      }
      if (!swarm_->have().test(ChunkIndex{next_read_}) || !may_hold(next_read_)) break;
      const std::uint32_t index = next_read_++;
      held_bytes_ += manifest.chunk_length(ChunkIndex{index});
      swarm_->read_chunk(ChunkIndex{index}, [self = shared_from_this(), index](const BufferPool::Buffer& buffer,
                                                                               std::optional<Failure> failure) {
        self->on_read(index, buffer, std::move(failure));
      });
      if (ended_) return;  // a read answered at once, and failed
    }
  }

  void on_read(std::uint32_t index, const BufferPool::Buffer& buffer, std::optional<Failure> failure) {
    auto c = connection_.lock();
    if (!c || c->closed()) return release();
    if (ended_) return;
    if (failure) return end(*c, error(failure->code, failure->message));
    ready_[index] = buffer;
    pump();
  }

  // Payload form: the bytes go from the chunk buffer to the socket as the
  // frame's payload (the buffer stays alive until written). Inline form
  // (clients that did not ask): copied into the message's `data`.
  void send_chunk(wire::Connection& c, const BufferPool::Buffer& buffer) {
    const std::uint64_t offset = swarm_->manifest().chunk_offset(ChunkIndex{next_});
    for (std::size_t at = 0; at < buffer->size(); at += kPieceBytes) {
      const std::size_t n = std::min(kPieceBytes, buffer->size() - at);
      pb::ControlResponse response;
      auto* data = response.mutable_stream_data();
      data->set_offset(offset + at);
      data->set_size(swarm_->manifest().size);
      if (payloads_) {
        data->set_length(n);
        c.send(response.SerializeAsString(),
               wire::Payload{std::span<const std::uint8_t>(buffer->data() + at, n), buffer});
      } else {
        data->set_data(buffer->data() + at, n);
        c.send(response.SerializeAsString());
      }
    }
  }

  pb::ControlResponse downloaded() const {
    if (outcome_) {
      if (const auto* done = std::get_if<pb::Downloaded>(&*outcome_)) {
        pb::ControlResponse response;
        *response.mutable_downloaded() = *done;
        return response;
      }
    }
    pb::ControlResponse response;
    auto* done = response.mutable_downloaded();
    done->set_file_id(to_bytes(swarm_->id()));
    done->set_path(swarm_->path().string());
    done->set_size(swarm_->manifest().size);
    return response;
  }

  static pb::ControlResponse error(Errc code, const std::string& text) {
    pb::ControlResponse response;
    *response.mutable_error() = protocol::make_error(static_cast<int>(code), text);
    return response;
  }

  void end(wire::Connection& c, const pb::ControlResponse& last) {
    ended_ = true;
    release();
    c.send(last.SerializeAsString());
  }

  std::weak_ptr<wire::Connection> connection_;
  std::shared_ptr<Swarm> swarm_;
  std::uint64_t token_;
  bool payloads_;                                      // RequestFile.stream_payloads
  std::uint32_t next_ = 0;                             // the next chunk to send
  std::uint32_t next_read_ = 0;                        // the next chunk to read
  std::map<std::uint32_t, BufferPool::Buffer> ready_;  // read, waiting for the chunks before them
  std::uint64_t held_bytes_ = 0;                       // being read or in ready_
  bool ended_ = false;
  bool released_ = false;
  std::optional<DownloadOutcome> outcome_;
};

}  // namespace

void start_stream(const std::shared_ptr<wire::Connection>& connection, const std::shared_ptr<Swarm>& swarm,
                  bool payloads) {
  std::make_shared<Stream>(connection, swarm, payloads)->start();
}

}  // namespace p2pshare::peer
