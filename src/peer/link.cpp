// PeerLink: one connection to another peer about one file (see link.hpp).
#include "peer/link.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "p2pshare/accounts.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "peer.pb.h"

namespace p2pshare::peer {
namespace {

// A peer may have this many requests queued at us; more is abuse
// (CVE-2023-25568: a peer pipelining without reading).
constexpr std::size_t kMaxQueuedRequests = 256;
// Chunks read ahead of the socket per connection: keeps the disk and the
// network overlapped without holding many buffers.
constexpr unsigned kReadAhead = 2;
// Capabilities one Interested or Renew may carry (one per group of the file).
constexpr int kMaxCapabilities = 8;

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
                                         const std::shared_ptr<LinkOwner>& owner, PeerId expected) {
  auto link = std::shared_ptr<PeerLink>(new PeerLink(services, std::move(connection)));
  link->owner_ = owner;
  link->remote_id_ = expected;
  link->key_ = key_of(expected);
  link->stage_ = Stage::await_welcome;
  // The key the answering side proves must be the one of the id the
  // registry listed, before we say anything.
  link->connection_->set_verify([expected](const wire::Connection& c) -> std::string {
    const auto proven = c.peer_id();
    std::string refused;
    if (!proven) {
      refused = "presented no certificate";
    } else if (*proven != expected) {
      refused = fmt::format("its key proves id {}, not {} as the registry lists", to_hex(*proven), to_hex(expected));
    }
    if (refused.empty()) return refused;
    refused = fmt::format("refused peer {}: {}", c.remote().address().to_string(), refused);
    log::warn("{}", refused);
    return refused;
  });
  link->start();
  link->connection_->send(protocol::hello(pb::PLANE_PEER, to_bytes(services.self)));
  pb::PeerMessage interested;
  interested.mutable_interested()->set_file_id(to_bytes(owner->id()));
  interested.mutable_interested()->set_bitfield(owner->have().to_wire());
  for (const auto& capability : owner->capabilities()) *interested.mutable_interested()->add_capability() = capability;
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
  if (auto owner = owner_.lock()) {
    if (receiving_) owner->on_payload_lost(*receiving_);
    receiving_.reset();
    owner->detach(*this);
  }
  serve_queue_.clear();
}

void PeerLink::activate(const std::shared_ptr<LinkOwner>& owner, Bitfield remote_have) {
  const std::uint32_t count = owner->manifest().chunk_count();
  remote_have_ = std::move(remote_have);
  promised_ = Bitfield(count);
  deferred_ = Bitfield(count);
  stage_ = Stage::active;
  owner->attach(shared_from_this());
}

void PeerLink::on_frame(std::string_view message, std::uint32_t payload_length) {
  try {
    if (stage_ == Stage::await_hello) {
      const auto hello = protocol::parse_hello(message);
      auto id = peer_id_from_bytes(hello.peer_id());
      if (hello.plane() != pb::PLANE_PEER || !id) throw Error(Errc::protocol, "expected a peer hello");
      // Mutual TLS: the id claimed must be the one the client certificate's
      // key proves; bans and every other decision use that proven id.
      const auto proven = connection_->peer_id();
      if (!proven) throw Error(Errc::unauthorized, "the peer plane needs a client certificate");
      if (*proven != *id) throw Error(Errc::unauthorized, "peer id does not match the key of its certificate");
      remote_id_ = *proven;
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
      auto owner = lookup_ ? lookup_(*file) : nullptr;
      if (!owner) {
        pb::PeerMessage error;
        *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::not_found), "file not found");
        connection_->send_and_close(encode(error), "asked for an unknown file");
        return;
      }
      const std::uint32_t count = owner->manifest().chunk_count();
      std::optional<Bitfield> remote;
      if (parsed.interested().bitfield().empty()) {
        remote = Bitfield(count);
      } else {
        remote = Bitfield::from_wire(parsed.interested().bitfield(), count);
      }
      if (!remote) throw Error(Errc::protocol, "bitfield does not match the file");
      if (!owner->groups().empty() || !owner->visibility_known()) {
        try {
          authorize(*owner, parsed.interested().capability());
        } catch (const Error& e) {
          // Told like an unknown file's refusal: one error, then closed.
          log::info("refused {} for {}: {}", to_hex(remote_id_), to_hex(*file), e.what());
          pb::PeerMessage error;
          *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::unauthorized), e.what());
          connection_->send_and_close(encode(error), e.what());
          return;
        }
      }
      lookup_ = nullptr;
      owner_ = owner;
      pb::PeerMessage bitfield;
      bitfield.mutable_bitfield()->set_bits(owner->have().to_wire());
      connection_->send(encode(bitfield));
      activate(owner, std::move(*remote));
      return;
    }
    if (stage_ == Stage::await_bitfield) {
      auto owner = owner_.lock();
      if (!owner) return close("download ended");
      if (parsed.has_error()) return close("peer refused: " + parsed.error().message());
      if (!parsed.has_bitfield()) throw Error(Errc::protocol, "expected bitfield");
      auto remote = Bitfield::from_wire(parsed.bitfield().bits(), owner->manifest().chunk_count());
      if (!remote) throw Error(Errc::protocol, "bitfield does not match the file");
      activate(owner, std::move(*remote));
      return;
    }
    auto owner = owner_.lock();
    if (!owner) return close("file no longer shared");
    handle_active(*owner, parsed, payload_length);
  } catch (const Error& e) {
    protocol_error(e.what());
  }
}

void PeerLink::handle_active(LinkOwner& owner, const pb::PeerMessage& message, std::uint32_t payload_length) {
  const std::uint32_t count = owner.manifest().chunk_count();
  if (payload_length > 0 && !message.has_piece()) throw Error(Errc::protocol, "payload on a non-piece message");
  switch (message.body_case()) {
    case pb::PeerMessage::kHave: {
      if (message.have().index() >= count) throw Error(Errc::protocol, "have: chunk index out of range");
      const ChunkIndex chunk{message.have().index()};
      remote_have_.set(chunk);
      owner.on_remote_have(*this, chunk);
      return;
    }
    case pb::PeerMessage::kRequest:
      if (message.request().index() >= count) throw Error(Errc::protocol, "request: chunk index out of range");
      if (authorized_until_ && std::chrono::system_clock::now() >= *authorized_until_) {
        // Not renewed in time (left the group, or the central server is
        // away longer than a capability lives): no more chunks.
        pb::PeerMessage error;
        *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::unauthorized), "capability expired");
        connection_->send_and_close(encode(error), "capability expired");
        return;
      }
      return on_request(owner, ChunkIndex{message.request().index()});
    case pb::PeerMessage::kRenew: {
      if (owner.groups().empty()) return;  // a public file needs none
      google::protobuf::RepeatedPtrField<pb::Capability> presented;
      *presented.Add() = message.renew().capability();
      try {
        authorize(owner, presented);
      } catch (const Error& e) {
        pb::PeerMessage error;
        *error.mutable_error() = protocol::make_error(static_cast<int>(Errc::unauthorized), e.what());
        connection_->send_and_close(encode(error), e.what());
      }
      return;
    }
    case pb::PeerMessage::kCancel: {
      const ChunkIndex chunk{message.cancel().index()};
      if (auto it = std::find(serve_queue_.begin(), serve_queue_.end(), chunk); it != serve_queue_.end()) {
        serve_queue_.erase(it);
      }
      return;
    }
    case pb::PeerMessage::kPiece:
      return on_piece(owner, ChunkIndex{message.piece().index()}, payload_length);
    case pb::PeerMessage::kReject: {
      const ChunkIndex chunk{message.reject().index()};
      if (asked_.erase(chunk) == 0) throw Error(Errc::protocol, "reject for a chunk never asked");
      if (message.reject().busy()) {
        owner.on_deferred(*this, chunk);
      } else {
        owner.on_rejected(*this, chunk);
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

void PeerLink::on_request(LinkOwner& owner, ChunkIndex chunk) {
  if (!owner.have().test(chunk)) return send_reject(chunk, false);
  // "Busy" at most once per chunk and link: asked again, it is served.
  if (!deferred_.test(chunk) && owner.should_defer(*this, chunk)) {
    deferred_.set(chunk);
    return send_reject(chunk, true);
  }
  if (serve_queue_.size() >= kMaxQueuedRequests) {
    throw Error(Errc::protocol, fmt::format("more than {} requests queued", kMaxQueuedRequests));
  }
  serve_queue_.push_back(chunk);
  // Promised from now on: another downloader asking for this chunk is
  // told "busy" already while this request waits in the queue.
  promised_.set(chunk);
  serve_more();
}

void PeerLink::authorize(const LinkOwner& owner, const google::protobuf::RepeatedPtrField<pb::Capability>& presented) {
  if (presented.empty()) throw Error(Errc::unauthorized, "this file is shared with a group: present a capability");
  if (presented.size() > kMaxCapabilities) throw Error(Errc::unauthorized, "too many capabilities");
  const auto trusted = services_.trusted_central ? services_.trusted_central() : std::nullopt;
  if (!trusted) throw Error(Errc::unauthorized, "this peer knows no central server key to check capabilities with");
  const auto now = std::chrono::system_clock::now();
  std::string why;
  for (const auto& wire : presented) {
    try {
      const auto capability = accounts::verify_capability(wire, *trusted, remote_id_, now);
      const auto& groups = owner.groups();
      if (std::find(groups.begin(), groups.end(), capability.group) == groups.end()) {
        why = "capability refused: for another group";
        continue;
      }
      if (!authorized_until_ || capability.expires > *authorized_until_) authorized_until_ = capability.expires;
      return;
    } catch (const Error& e) {
      why = e.what();
    }
  }
  throw Error(Errc::unauthorized, why);
}

void PeerLink::send_renew(const std::vector<pb::Capability>& capabilities) {
  if (closed() || stage_ == Stage::await_hello || stage_ == Stage::await_interested) return;
  for (const auto& capability : capabilities) {
    pb::PeerMessage renew;
    *renew.mutable_renew()->mutable_capability() = capability;
    connection_->send(encode(renew));
  }
}

void PeerLink::send_reject(ChunkIndex chunk, bool busy) {
  pb::PeerMessage reject;
  reject.mutable_reject()->set_index(chunk.value);
  if (busy) reject.mutable_reject()->set_busy(true);
  connection_->send(encode(reject));
}

void PeerLink::on_piece(LinkOwner& owner, ChunkIndex chunk, std::uint32_t payload_length) {
  // Only data we asked for, of exactly the chunk's length, is read at all.
  if (asked_.erase(chunk) == 0) throw Error(Errc::protocol, "piece for a chunk never asked");
  if (payload_length != owner.manifest().chunk_length(chunk)) throw Error(Errc::protocol, "piece of the wrong length");
  auto buffer = services_.buffers->acquire(payload_length);
  const bool keep = owner.on_piece_header(*this, chunk);
  if (keep) receiving_ = chunk;
  std::weak_ptr<PeerLink> weak = shared_from_this();
  connection_->read_payload(std::span(buffer->data(), buffer->size()), [weak, chunk, keep, buffer, payload_length] {
    auto link = weak.lock();
    if (!link) return;
    link->downloaded_ += payload_length;
    auto current = link->owner_.lock();
    if (!current) return;
    current->on_received(payload_length);
    if (!keep) return;  // a duplicate from the endgame: counted, dropped
    link->receiving_.reset();
    current->on_payload(*link, chunk, buffer);
  });
}

void PeerLink::serve_more() {
  auto owner = owner_.lock();
  if (!owner || closed()) return;
  // Read ahead only while the socket is draining: a peer that does not read
  // holds at most kReadAhead chunks of our memory.
  while (!serve_queue_.empty() && reads_in_flight_ < kReadAhead &&
         connection_->queued_bytes() < 2 * static_cast<std::size_t>(owner->manifest().chunk_size)) {
    const ChunkIndex chunk = serve_queue_.front();
    serve_queue_.pop_front();
    ++reads_in_flight_;
    std::weak_ptr<PeerLink> weak = shared_from_this();
    owner->read_chunk(chunk, [weak, chunk](const BufferPool::Buffer& buffer, std::optional<Failure> failure) {
      auto link = weak.lock();
      if (!link) return;
      --link->reads_in_flight_;
      if (link->closed()) return;
      auto current = link->owner_.lock();
      if (!current) return;
      if (failure) {
        // Our copy is unreadable (moved, shrunk): refuse, keep the link.
        log::warn("cannot serve chunk {} of {}: {}", chunk.value, to_hex(current->id()), failure->message);
        link->send_reject(chunk, false);
        return;
      }
      pb::PeerMessage piece;
      piece.mutable_piece()->set_index(chunk.value);
      const auto bytes = std::span<const std::uint8_t>(buffer->data(), buffer->size());
      current->on_sent(bytes.size());
      link->uploaded_ += bytes.size();
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
  asked_.insert(chunk);
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
