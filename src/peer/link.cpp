// PeerLink: one connection to another peer about one file (see swarm.hpp).
#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "peer.pb.h"
#include "peer/swarm.hpp"

namespace p2pshare::peer {
namespace {

// A peer may have this many requests queued at us; more is abuse
// (CVE-2023-25568: a peer pipelining without reading).
constexpr std::size_t kMaxQueuedRequests = 256;
// Chunks read ahead of the socket per connection: keeps the disk and the
// network overlapped without holding many buffers.
constexpr unsigned kReadAhead = 2;

std::string encode(const pb::PeerMessage& message) {
  return message.SerializeAsString();
}

}  // namespace

sched::PeerKey key_of(const PeerId& id) {
  sched::PeerKey key = 0;
  for (std::size_t i = 0; i < sizeof(key); ++i) key = key << 8 | id.bytes[i];
  return key;
}

PeerLink::PeerLink(Services& services, std::shared_ptr<wire::Connection> connection)
    : services_(services), connection_(std::move(connection)) {}

std::shared_ptr<PeerLink> PeerLink::accept(Services& services, std::shared_ptr<wire::Connection> connection,
                                           Lookup lookup, std::string_view hello) {
  auto link = std::shared_ptr<PeerLink>(new PeerLink(services, std::move(connection)));
  link->lookup_ = std::move(lookup);
  link->stage_ = Stage::await_hello;
  link->start();
  link->on_frame(hello, 0);
  return link;
}

std::shared_ptr<PeerLink> PeerLink::open(Services& services, std::shared_ptr<wire::Connection> connection,
                                         std::shared_ptr<Swarm> swarm, PeerId expected) {
  auto link = std::shared_ptr<PeerLink>(new PeerLink(services, std::move(connection)));
  link->swarm_ = swarm;
  link->remote_id_ = expected;
  link->key_ = key_of(expected);
  link->stage_ = Stage::await_welcome;
  link->start();
  swarm->pending_links_.insert(link);
  link->connection_->send(protocol::hello(pb::PLANE_PEER, to_bytes(services.self)));
  pb::PeerMessage interested;
  interested.mutable_interested()->set_file_id(to_bytes(swarm->id()));
  interested.mutable_interested()->set_bitfield(swarm->have().to_wire());
  link->connection_->send(encode(interested));
  return link;
}

void PeerLink::start() {
  auto self = shared_from_this();
  connection_->set_read_throttle(services_.download);
  connection_->set_write_throttle(services_.upload);
  connection_->set_on_sent([weak = std::weak_ptr<PeerLink>(self)] {
    if (auto link = weak.lock()) link->serve_more();
  });
  connection_->start([self](std::string_view message, std::uint32_t payload) { self->on_frame(message, payload); },
                     [self](const std::string& reason) { self->on_closed(reason); });
}

bool PeerLink::closed() const {
  return connection_->closed();
}

void PeerLink::close(const std::string& reason) {
  connection_->close(reason);
}

void PeerLink::protocol_error(const std::string& why) {
  log::debug("peer {}: protocol error: {}", connection_->remote().address().to_string(), why);
  pb::PeerMessage error;
  *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::protocol), why);
  connection_->send_and_close(encode(error), "protocol error: " + why);
}

void PeerLink::on_closed(const std::string& reason) {
  log::debug("link to {} closed: {}", connection_->remote().address().to_string(), reason);
  if (auto swarm = swarm_.lock()) {
    if (receiving_) swarm->on_payload_lost(ChunkIndex{*receiving_});
    receiving_.reset();
    swarm->detach(*this);
  }
  serve_queue_.clear();
}

void PeerLink::on_frame(std::string_view message, std::uint32_t payload_length) {
  try {
    if (stage_ == Stage::await_hello) {
      const auto hello = protocol::parse_hello(message);
      auto id = peer_id_from_bytes(hello.peer_id());
      if (hello.plane() != pb::PLANE_PEER || !id) throw Error(Errc::protocol, "expected a peer hello");
      remote_id_ = *id;
      key_ = key_of(remote_id_);
      pb::Welcome welcome;
      welcome.set_version(protocol::kVersion);
      welcome.set_peer_id(to_bytes(services_.self));
      connection_->set_limits(protocol::kPeerLimits);
      connection_->send(welcome.SerializeAsString());
      stage_ = Stage::await_interested;
      return;
    }
    if (stage_ == Stage::await_welcome) {
      pb::Welcome welcome;
      if (!welcome.ParseFromArray(message.data(), static_cast<int>(message.size())) ||
          welcome.version() != protocol::kVersion) {
        throw Error(Errc::protocol, "expected a welcome");
      }
      // The id the central server listed must be the one that answers.
      if (welcome.peer_id() != to_bytes(remote_id_)) throw Error(Errc::protocol, "peer id does not match the registry");
      verified_ = true;
      stage_ = Stage::await_bitfield;
      return;
    }
    pb::PeerMessage parsed;
    if (!parsed.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
      throw Error(Errc::protocol, "malformed peer message");
    }
    if (stage_ == Stage::await_interested) {
      if (!parsed.has_interested()) throw Error(Errc::protocol, "expected interested");
      auto file = file_id_from_bytes(parsed.interested().file_id());
      if (!file) throw Error(Errc::protocol, "file id must be 32 bytes");
      auto swarm = lookup_ ? lookup_(*file) : nullptr;
      if (!swarm) {
        pb::PeerMessage error;
        *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::not_found), "file not found");
        connection_->send_and_close(encode(error), "asked for an unknown file");
        return;
      }
      std::optional<Bitfield> remote;
      if (parsed.interested().bitfield().empty()) {
        remote = Bitfield(swarm->manifest().chunk_count());
      } else {
        remote = Bitfield::from_wire(parsed.interested().bitfield(), swarm->manifest().chunk_count());
      }
      if (!remote) throw Error(Errc::protocol, "bitfield does not match the file");
      lookup_ = nullptr;
      swarm_ = swarm;
      stage_ = Stage::active;
      pb::PeerMessage bitfield;
      bitfield.mutable_bitfield()->set_bits(swarm->have().to_wire());
      connection_->send(encode(bitfield));
      swarm->attach(shared_from_this(), *remote);
      return;
    }
    if (stage_ == Stage::await_bitfield) {
      auto swarm = swarm_.lock();
      if (!swarm) return close("download ended");
      if (parsed.has_error()) return close("peer refused: " + parsed.error().message());
      if (!parsed.has_bitfield()) throw Error(Errc::protocol, "expected bitfield");
      auto remote = Bitfield::from_wire(parsed.bitfield().bits(), swarm->manifest().chunk_count());
      if (!remote) throw Error(Errc::protocol, "bitfield does not match the file");
      stage_ = Stage::active;
      swarm->attach(shared_from_this(), *remote);
      return;
    }
    handle_active(parsed, payload_length);
  } catch (const Error& e) {
    protocol_error(e.what());
  }
}

void PeerLink::handle_active(const pb::PeerMessage& message, std::uint32_t payload_length) {
  auto swarm = swarm_.lock();
  if (!swarm) return close("file no longer shared");
  const std::uint32_t count = swarm->manifest().chunk_count();
  if (payload_length > 0 && !message.has_piece()) throw Error(Errc::protocol, "payload on a non-piece message");
  switch (message.body_case()) {
    case pb::PeerMessage::kHave:
      if (message.have().index() >= count) throw Error(Errc::protocol, "have: chunk index out of range");
      swarm->on_remote_have(*this, ChunkIndex{message.have().index()});
      return;
    case pb::PeerMessage::kRequest: {
      const std::uint32_t index = message.request().index();
      if (index >= count) throw Error(Errc::protocol, "request: chunk index out of range");
      if (!swarm->has_chunk(ChunkIndex{index})) {
        pb::PeerMessage reject;
        reject.mutable_reject()->set_index(index);
        connection_->send(encode(reject));
        return;
      }
      if (swarm->should_defer(*this, ChunkIndex{index})) {
        pb::PeerMessage busy;
        busy.mutable_reject()->set_index(index);
        busy.mutable_reject()->set_busy(true);
        connection_->send(encode(busy));
        return;
      }
      if (serve_queue_.size() >= kMaxQueuedRequests) {
        throw Error(Errc::protocol, fmt::format("more than {} requests queued", kMaxQueuedRequests));
      }
      serve_queue_.push_back(index);
      // Promised from now on: another downloader asking for this chunk is
      // told "busy" already while this request waits in the queue.
      sent_.set(ChunkIndex{index});
      serve_more();
      return;
    }
    case pb::PeerMessage::kCancel: {
      const std::uint32_t index = message.cancel().index();
      for (auto it = serve_queue_.begin(); it != serve_queue_.end(); ++it) {
        if (*it == index) {
          serve_queue_.erase(it);
          break;
        }
      }
      return;
    }
    case pb::PeerMessage::kPiece:
      on_piece(ChunkIndex{message.piece().index()}, payload_length);
      return;
    case pb::PeerMessage::kReject: {
      const std::uint32_t index = message.reject().index();
      if (asked_.erase(index) == 0) throw Error(Errc::protocol, "reject for a chunk never asked");
      if (message.reject().busy()) {
        swarm->on_deferred(*this, ChunkIndex{index});
      } else {
        swarm->on_rejected(*this, ChunkIndex{index});
      }
      return;
    }
    case pb::PeerMessage::kKeepAlive:
      return;
    case pb::PeerMessage::kError:
      return close("peer error: " + message.error().message());
    case pb::PeerMessage::kInterested:
    case pb::PeerMessage::kBitfield:
    case pb::PeerMessage::BODY_NOT_SET:
      break;
  }
  throw Error(Errc::protocol, "unexpected message");
}

void PeerLink::on_piece(ChunkIndex chunk, std::uint32_t payload_length) {
  auto swarm = swarm_.lock();
  if (!swarm) return close("download ended");
  // Only data we asked for, of exactly the chunk's length, is read at all.
  if (asked_.erase(chunk.value) == 0) throw Error(Errc::protocol, "piece for a chunk never asked");
  if (payload_length != swarm->manifest().chunk_length(chunk)) throw Error(Errc::protocol, "piece of the wrong length");
  auto buffer = services_.buffers->acquire(payload_length);
  const bool keep = swarm->accept_piece(*this, chunk);
  if (keep) receiving_ = chunk.value;
  std::weak_ptr<PeerLink> weak = shared_from_this();
  connection_->read_payload(std::span(buffer->data(), buffer->size()), [weak, chunk, keep, buffer, payload_length] {
    auto link = weak.lock();
    if (!link) return;
    link->downloaded_ += payload_length;
    auto s = link->swarm_.lock();
    if (!s) return;
    s->bytes_received_ += payload_length;
    if (!keep) return;  // a duplicate from the endgame: counted, dropped
    link->receiving_.reset();
    s->on_payload(*link, chunk, buffer);
  });
}

void PeerLink::serve_more() {
  auto swarm = swarm_.lock();
  if (!swarm || closed()) return;
  // Read ahead only while the socket is draining: a peer that does not read
  // holds at most kReadAhead chunks of our memory.
  while (!serve_queue_.empty() && reads_in_flight_ < kReadAhead &&
         connection_->queued_bytes() < 2 * static_cast<std::size_t>(swarm->manifest().chunk_size)) {
    const std::uint32_t index = serve_queue_.front();
    serve_queue_.pop_front();
    ++reads_in_flight_;
    std::weak_ptr<PeerLink> weak = shared_from_this();
    swarm->read_chunk(ChunkIndex{index}, [weak, index](BufferPool::Buffer buffer, const std::string& error) {
      auto link = weak.lock();
      if (!link) return;
      --link->reads_in_flight_;
      if (link->closed()) return;
      auto s = link->swarm_.lock();
      if (!s) return;
      if (!error.empty()) {
        // Our copy is unreadable (moved, shrunk): refuse, keep the link.
        log::warn("cannot serve chunk {} of {}: {}", index, to_hex(s->id()), error);
        pb::PeerMessage reject;
        reject.mutable_reject()->set_index(index);
        link->connection_->send(encode(reject));
        return;
      }
      pb::PeerMessage piece;
      piece.mutable_piece()->set_index(index);
      const auto bytes = std::span<const std::uint8_t>(buffer->data(), buffer->size());
      s->count_upload(bytes.size());
      link->connection_->send(encode(piece), wire::Payload{bytes, buffer});
      link->serve_more();
    });
  }
}

void PeerLink::send_have(ChunkIndex chunk) {
  if (stage_ != Stage::active || closed()) return;
  pb::PeerMessage have;
  have.mutable_have()->set_index(chunk.value);
  connection_->send(encode(have));
}

void PeerLink::send_request(ChunkIndex chunk) {
  if (closed()) return;
  asked_.insert(chunk.value);
  pb::PeerMessage request;
  request.mutable_request()->set_index(chunk.value);
  connection_->send(encode(request));
}

void PeerLink::send_cancel(ChunkIndex chunk) {
  if (closed()) return;
  // Stays in asked_: the piece may already be on its way and is then legal.
  pb::PeerMessage cancel;
  cancel.mutable_cancel()->set_index(chunk.value);
  connection_->send(encode(cancel));
}

}  // namespace p2pshare::peer
