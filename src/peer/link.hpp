// PeerLink: one connection to another peer about one file, from the
// handshake to the close. It speaks the peer protocol (docs/protocol.md) and
// keeps what is about this connection alone: what the other side has, what
// we asked it for, what it asked us for, what we answered "busy" to. Every
// decision about the file (which chunk to ask for, whether to keep a piece,
// whether to answer "busy", where chunk bytes come from and go) belongs to
// its LinkOwner, the file's Swarm.
//
// Threading: network thread only. A link owns itself (shared_ptr, handlers
// capture it); it holds its owner weakly, so a swarm that is gone makes its
// links close, not dangle.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/types.hpp"
#include "p2pshare/wire.hpp"
#include "peer.pb.h"
#include "peer/services.hpp"

namespace p2pshare::peer {

class PeerLink;

// What a link asks of and tells the swarm of its file. Called on the network
// thread, from the link's own handlers. Any call may close links, this one
// included (close() detaches a link at once).
class LinkOwner {
 public:
  using ReadDone = std::function<void(BufferPool::Buffer, std::optional<Failure>)>;
  virtual ~LinkOwner() = default;

  virtual const FileId& id() const = 0;
  virtual const Manifest& manifest() const = 0;
  // The chunks we have and can serve.
  virtual const Bitfield& have() const = 0;

  // The handshake is over and link->remote_have() is known: the link takes
  // part in the swarm, or the owner closes it (duplicate, ourselves, banned).
  virtual void attach(const std::shared_ptr<PeerLink>& link) = 0;
  // The link closed (once, whatever the stage); it must be forgotten.
  virtual void detach(PeerLink& link) = 0;

  // --- downloading: what the other side tells us --------------------------
  virtual void on_remote_have(PeerLink& link, ChunkIndex chunk) = 0;
  // A Piece header for a chunk we asked for: keep its payload? (endgame may
  // have made it a duplicate). False: the payload is read and dropped.
  virtual bool on_piece_header(PeerLink& link, ChunkIndex chunk) = 0;
  // The payload of a kept piece is in `buffer`, not yet verified.
  virtual void on_payload(PeerLink& link, ChunkIndex chunk, BufferPool::Buffer buffer) = 0;
  // The link closed while the payload of a kept piece was being read.
  virtual void on_payload_lost(ChunkIndex chunk) = 0;
  // Payload bytes read from this link, kept or not.
  virtual void on_received(std::uint64_t bytes) = 0;
  virtual void on_rejected(PeerLink& link, ChunkIndex chunk) = 0;
  virtual void on_deferred(PeerLink& link, ChunkIndex chunk) = 0;

  // --- serving: what the other side asks of us -----------------------------
  // Answer this request "busy" instead of sending the chunk? Asked at most
  // once per chunk and link: a repeated request is served.
  virtual bool should_defer(const PeerLink& link, ChunkIndex chunk) = 0;
  // Reads a chunk we have into a pooled buffer; `done` runs on the network
  // thread with the buffer, or with the failure: at once (inside this call)
  // when the bytes were in the page cache, else later, from the disk pool.
  virtual void read_chunk(ChunkIndex chunk, ReadDone done) = 0;
  // Chunk bytes handed to the socket for the other side.
  virtual void on_sent(std::uint64_t bytes) = 0;

  // --- groups (docs/protocol.md, "Accounts, groups and capabilities") ---------
  // The groups this peer registered the file in: empty = served to anyone;
  // else only to a peer presenting a capability for one of them.
  virtual const std::vector<std::string>& groups() const = 0;
  // Downloading a group's file: the capabilities we present (may be empty).
  virtual const std::vector<pb::Capability>& capabilities() const = 0;
  // False while a download does not know yet whether its file is a group's
  // (before the first answer from the central server): it serves nobody.
  virtual bool visibility_known() const = 0;
};

// The key the scheduler knows a peer by, derived from its id: stable across
// reconnects, so a ban outlives a connection.
sched::PeerKey key_of(const PeerId& id);

class PeerLink : public std::enable_shared_from_this<PeerLink> {
 public:
  using Lookup = std::function<std::shared_ptr<LinkOwner>(const FileId&)>;
  // An accepted connection whose first frame, `hello`, named the peer
  // plane: answers it, then expects Interested and looks the file up.
  static std::shared_ptr<PeerLink> accept(Services& services, std::shared_ptr<wire::Connection> connection,
                                          Lookup lookup, std::string_view hello);
  // A connection we opened to download: sends Hello and Interested. The
  // answering peer must prove to be `expected` (the registry's id for it).
  static std::shared_ptr<PeerLink> open(Services& services, std::shared_ptr<wire::Connection> connection,
                                        const std::shared_ptr<LinkOwner>& owner, PeerId expected);

  void send_have(ChunkIndex chunk);
  void send_request(ChunkIndex chunk);
  void send_cancel(ChunkIndex chunk);
  void close(const std::string& reason);
  bool closed() const;

  sched::PeerKey key() const { return key_; }
  const PeerId& remote_id() const { return remote_id_; }
  // We dialled it and its Welcome carried the id the registry gave us.
  bool verified() const { return verified_; }
  // What the other side has, as it told us (valid once attached).
  const Bitfield& remote_have() const { return remote_have_; }
  // It asked us for the chunk and we accepted (queued or sent).
  bool promised(ChunkIndex chunk) const { return promised_.test(chunk); }
  std::uint64_t downloaded() const { return downloaded_; }
  std::uint64_t uploaded() const { return uploaded_; }  // chunk bytes we sent it
  // Sends fresher capabilities on an open link (the owner renewed them).
  void send_renew(const std::vector<pb::Capability>& capabilities);

 private:
  struct ChunkIndexHash {
    std::size_t operator()(ChunkIndex chunk) const noexcept { return chunk.value; }
  };
  enum class Stage { await_hello, await_welcome, await_interested, await_bitfield, active };
  PeerLink(Services& services, std::shared_ptr<wire::Connection> connection);
  void start();
  void on_frame(std::string_view message, std::uint32_t payload_length);
  void on_closed(const std::string& reason);
  // The remote bitfield is in: sizes this link's per-chunk state and attaches.
  void activate(const std::shared_ptr<LinkOwner>& owner, Bitfield remote_have);
  void handle_active(LinkOwner& owner, const pb::PeerMessage& message, std::uint32_t payload_length);
  void on_request(LinkOwner& owner, ChunkIndex chunk);
  void on_piece(LinkOwner& owner, ChunkIndex chunk, std::uint32_t payload_length);
  void serve_more();
  void send_reject(ChunkIndex chunk, bool busy);
  void protocol_error(const std::string& why);
  // Serving a group's file: a presented capability valid for one of the
  // owner's groups, or Error(unauthorized). Sets authorized_until_.
  void authorize(const LinkOwner& owner, const google::protobuf::RepeatedPtrField<pb::Capability>& presented);

  Services& services_;
  std::shared_ptr<wire::Connection> connection_;
  Lookup lookup_;
  std::weak_ptr<LinkOwner> owner_;
  Stage stage_ = Stage::await_hello;
  PeerId remote_id_;
  sched::PeerKey key_ = 0;
  std::unordered_set<ChunkIndex, ChunkIndexHash> asked_;  // requests we sent, not yet answered
  std::deque<ChunkIndex> serve_queue_;                    // requests we owe, in order
  unsigned reads_in_flight_ = 0;
  std::optional<ChunkIndex> receiving_;  // payload being read into a buffer, to be kept
  Bitfield remote_have_;
  Bitfield promised_;  // chunks it asked us for and we accepted (serving)
  Bitfield deferred_;  // chunks we answered "busy" to it once
  bool verified_ = false;
  std::uint64_t downloaded_ = 0;
  std::uint64_t uploaded_ = 0;
  // Serving a group's file: requests are served until then (the expiry of
  // the capability it presented); nullopt = a public file, no limit. The
  // whole per-request cost of access control is this one comparison.
  std::optional<std::chrono::system_clock::time_point> authorized_until_;
};

}  // namespace p2pshare::peer
