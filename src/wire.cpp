#include "p2pshare/wire.hpp"

#include <fmt/format.h>

#include <openssl/err.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"

namespace p2pshare::wire {

std::array<std::uint8_t, kHeaderSize> encode_header(FrameHeader header) {
  std::array<std::uint8_t, kHeaderSize> out{};
  for (int i = 0; i < 4; ++i) {
    out[i] = static_cast<std::uint8_t>(header.message_length >> (24 - 8 * i));
    out[4 + i] = static_cast<std::uint8_t>(header.payload_length >> (24 - 8 * i));
  }
  return out;
}

std::optional<FrameHeader> decode_header(std::span<const std::uint8_t, kHeaderSize> bytes, const Limits& limits,
                                         std::string* why) {
  FrameHeader header;
  for (int i = 0; i < 4; ++i) {
    header.message_length = header.message_length << 8 | bytes[i];
    header.payload_length = header.payload_length << 8 | bytes[4 + i];
  }
  if (header.message_length == 0) {
    if (why) *why = "frame with an empty message";
    return std::nullopt;
  }
  if (header.message_length > limits.max_message) {
    if (why)
      *why = fmt::format("message of {} bytes is over the limit of {}", header.message_length, limits.max_message);
    return std::nullopt;
  }
  if (header.payload_length > limits.max_payload) {
    if (why)
      *why = fmt::format("payload of {} bytes is over the limit of {}", header.payload_length, limits.max_payload);
    return std::nullopt;
  }
  return header;
}

bool FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  if (!error_.empty()) return false;
  // Compact before growing so a long stream does not keep consumed bytes.
  if (consumed_ > 0 && consumed_ * 2 >= buffer_.size()) {
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  buffer_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  // Validate a complete header as soon as it is here, before the body arrives.
  if (buffer_.size() - consumed_ >= kHeaderSize) {
    std::array<std::uint8_t, kHeaderSize> head{};
    std::memcpy(head.data(), buffer_.data() + consumed_, kHeaderSize);
    if (!decode_header(head, limits_, &error_)) return false;
  }
  return true;
}

std::optional<FrameDecoder::Frame> FrameDecoder::next() {
  if (!error_.empty() || buffer_.size() - consumed_ < kHeaderSize) return std::nullopt;
  std::array<std::uint8_t, kHeaderSize> head{};
  std::memcpy(head.data(), buffer_.data() + consumed_, kHeaderSize);
  auto header = decode_header(head, limits_, &error_);
  if (!header) return std::nullopt;
  const std::size_t total = kHeaderSize + std::size_t{header->message_length} + header->payload_length;
  if (buffer_.size() - consumed_ < total) return std::nullopt;
  Frame frame;
  frame.message = buffer_.substr(consumed_ + kHeaderSize, header->message_length);
  frame.payload = buffer_.substr(consumed_ + kHeaderSize + header->message_length, header->payload_length);
  consumed_ += total;
  // The next header, if already here, is checked now too.
  if (buffer_.size() - consumed_ >= kHeaderSize) {
    std::memcpy(head.data(), buffer_.data() + consumed_, kHeaderSize);
    decode_header(head, limits_, &error_);
  }
  return frame;
}

// ---------------------------------------------------------------------------

bool is_eof(const std::error_code& ec) {
  return ec == asio::error::eof || ec == tls::stream_truncated();
}

namespace {

std::string io_error(const std::error_code& ec, const char* eof_text) {
  if (is_eof(ec)) return eof_text;
  return ec.message();
}

}  // namespace

std::shared_ptr<Connection> Connection::create(asio::ip::tcp::socket socket, asio::ssl::context& context,
                                               tls::Side side, ConnectionOptions options) {
  return std::shared_ptr<Connection>(new Connection(std::move(socket), context, side, options));
}

Connection::Connection(asio::ip::tcp::socket socket, asio::ssl::context& context, tls::Side side,
                       ConnectionOptions options)
    : stream_(std::move(socket), context),
      side_(side),
      options_(options),
      read_deadline_(stream_.get_executor()),
      write_deadline_(stream_.get_executor()) {
  std::error_code ec;
  remote_ = stream_.socket().remote_endpoint(ec);
}

Connection::~Connection() = default;

std::optional<PeerId> Connection::peer_id() const {
  if (!peer_key_) return std::nullopt;
  return peer_id_of_key_hash(*peer_key_);
}

void Connection::handshake() {
  // The handshake runs on the first-frame deadline: a peer that never
  // finishes it is cut like one that never sends a frame.
  arm_read_deadline(options_.timeouts.first_frame);
  stream_.async_handshake(side_, [self = shared_from_this()](const std::error_code& ec) {
    if (self->closed_) return;
    if (ec) {
      ERR_clear_error();
      // Garbage instead of a ClientHello is the other
      // side's problem: one debug line, that one
      // connection closed.
      const std::string why = "TLS handshake failed: " + io_error(ec, "closed by peer");
      log::debug("{}: {}", self->remote_.address().to_string(), why);
      self->close(why);
      return;
    }
    self->peer_key_ = tls::peer_key_hash(self->stream_.native_handle());
    if (self->verify_) {
      // Used once: dropped here, so what it captured
      // is not kept for the connection's life.
      const Verify verify = std::move(self->verify_);
      self->verify_ = nullptr;
      std::string refused = verify(*self);
      if (!refused.empty()) {
        self->close(refused);
        return;
      }
    }
    self->secured_ = true;
    self->read_header();
    if (!self->writing_ && !self->queue_.empty()) self->write_next();
  });
}

void Connection::start(FrameHandler on_frame, CloseHandler on_close) {
  on_close_ = std::move(on_close);
  if (started_) {
    // The running handler must not be destroyed under its own feet.
    if (in_frame_handler_) {
      next_on_frame_ = std::move(on_frame);
    } else {
      on_frame_ = std::move(on_frame);
    }
    return;
  }
  started_ = true;
  on_frame_ = std::move(on_frame);
  handshake();
}

void Connection::arm_read_deadline(std::chrono::milliseconds timeout) {
  if (closing_) return;  // the linger of send_and_close runs on this timer
  read_deadline_.expires_after(timeout);
  read_deadline_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec || self->closed_) return;
    if (self->read_deadline_.expiry() <= asio::steady_timer::clock_type::now()) {
      self->close("read deadline passed");
    }
  });
}

void Connection::read_header() {
  if (closed_ || closing_) return;
  if (!first_frame_) arm_read_deadline(options_.timeouts.idle);
  // The first bytes are read on their own: the frame deadline runs from the
  // frame's first byte, so a peer trickling the header is cut off in time.
  stream_.async_read_some(
      std::span(header_bytes_), [self = shared_from_this()](const std::error_code& ec, std::size_t n) {
        if (self->closed_ || self->closing_) return;
        if (ec) {
          self->close(io_error(ec, "closed by peer"));
          return;
        }
        if (!self->first_frame_) self->arm_read_deadline(self->options_.timeouts.frame);
        if (n == kHeaderSize) {
          self->on_header({});
          return;
        }
        self->stream_.async_read(std::span(self->header_bytes_.data() + n, kHeaderSize - n),
                                 [self](const std::error_code& e, std::size_t) { self->on_header(e); });
      });
}

void Connection::on_header(const std::error_code& ec) {
  if (closed_ || closing_) return;
  if (ec) {
    close(io_error(ec, "closed by peer mid-frame"));
    return;
  }
  std::string why;
  auto header = decode_header(header_bytes_, options_.limits, &why);
  if (!header) {
    close("protocol error: " + why);
    return;
  }
  header_ = *header;
  message_.clear();
  read_message_part();
}

void Connection::read_message_part() {
  // The buffer grows only as bytes arrive: a header that promises megabytes
  // costs nothing until the peer really sends them (within the frame deadline).
  constexpr std::size_t kStep = std::size_t{64} * 1024;
  const std::size_t have = message_.size();
  const std::size_t step = std::min<std::size_t>(kStep, header_.message_length - have);
  message_.resize(have + step);
  stream_.async_read(std::span(message_.data() + have, step),
                     [self = shared_from_this()](const std::error_code& e, std::size_t) {
                       if (!e && !self->closed_ && self->message_.size() < self->header_.message_length) {
                         self->read_message_part();
                         return;
                       }
                       self->on_message(e);
                     });
}

void Connection::on_message(const std::error_code& ec) {
  if (closed_ || closing_) return;
  if (ec) {
    close(io_error(ec, "closed by peer mid-frame"));
    return;
  }
  payload_claimed_ = false;
  const std::uint32_t payload_length = header_.payload_length;
  first_frame_ = false;
  if (on_frame_) {
    in_frame_handler_ = true;
    on_frame_(std::string_view(reinterpret_cast<const char*>(message_.data()), message_.size()), payload_length);
    in_frame_handler_ = false;
    if (next_on_frame_) on_frame_ = std::move(next_on_frame_);
    next_on_frame_ = nullptr;
  }
  // One large frame does not pin its buffer for the connection's life.
  if (message_.capacity() > std::size_t{256} * 1024) std::vector<std::uint8_t>().swap(message_);
  if (closed_ || closing_) return;
  if (payload_length > 0) {
    if (!payload_claimed_) close("protocol error: unexpected payload");
    return;  // read_payload resumes the loop
  }
  read_header();
}

void Connection::read_payload(std::span<std::uint8_t> destination, std::function<void()> done) {
  if (closed_ || closing_) return;
  if (destination.size() != header_.payload_length) {
    close("protocol error: payload length does not match");
    return;
  }
  payload_claimed_ = true;
  auto self = shared_from_this();
  auto do_read = [self, destination, throttled = read_throttle_ != nullptr, done = std::move(done)]() mutable {
    if (self->closed_ || self->closing_) return;
    // The frame's deadline still runs, unless a rate limit paused it: then
    // the payload gets a fresh one of its own.
    if (throttled) self->arm_read_deadline(self->options_.timeouts.frame);
    self->stream_.async_read(destination, [self, done = std::move(done)](const std::error_code& ec, std::size_t n) {
      if (self->closed_ || self->closing_) return;
      if (ec) {
        self->close(io_error(ec, "closed by peer mid-payload"));
        return;
      }
      self->payload_received_ += n;
      done();
      self->read_header();
    });
  };
  if (read_throttle_) {
    // Waiting for the rate limit is not the peer's fault: no deadline meanwhile.
    read_deadline_.cancel();
    read_throttle_->acquire(destination.size(), std::move(do_read));
  } else {
    do_read();
  }
}

void Connection::send(std::string message, Payload payload) {
  if (closed_ || closing_) return;
  Outgoing out;
  out.header =
      encode_header({static_cast<std::uint32_t>(message.size()), static_cast<std::uint32_t>(payload.bytes.size())});
  queued_bytes_ += kHeaderSize + message.size() + payload.bytes.size();
  out.message = std::move(message);
  out.payload = std::move(payload);
  queue_.push_back(std::move(out));
  if (queued_bytes_ > options_.max_queued_bytes) {
    close(fmt::format("peer is not reading: {} bytes unsent", queued_bytes_));
    return;
  }
  if (!writing_ && secured_) write_next();
}

void Connection::send_and_close(std::string message, const std::string& reason) {
  if (closed_ || closing_) return;
  send(std::move(message));
  if (closed_) return;
  // From now on nothing more is read or queued: whatever else the peer sends
  // (a million more requests, say) costs us nothing.
  closing_ = true;
  queue_.back().close_after = true;
  queue_.back().close_reason = reason;
  // A peer that does not read gets a short grace to take the last frame, not
  // the whole write deadline.
  read_deadline_.expires_after(options_.timeouts.close_linger);
  read_deadline_.async_wait([self = shared_from_this(), reason](const std::error_code& ec) {
    if (ec || self->closed_) return;
    if (self->read_deadline_.expiry() <= asio::steady_timer::clock_type::now()) self->close(reason);
  });
}

void Connection::write_next() {
  if (closed_ || queue_.empty()) {
    writing_ = false;
    return;
  }
  writing_ = true;
  auto self = shared_from_this();
  auto do_write = [self] {
    if (self->closed_) return;
    Outgoing& out = self->queue_.front();
    std::vector<asio::const_buffer> buffers{asio::buffer(out.header), asio::buffer(out.message),
                                            asio::buffer(out.payload.bytes.data(), out.payload.bytes.size())};
    self->write_deadline_.expires_after(self->options_.timeouts.write);
    self->write_deadline_.async_wait([self](const std::error_code& ec) {
      if (ec || self->closed_) return;
      if (self->write_deadline_.expiry() <= asio::steady_timer::clock_type::now()) {
        self->close("write deadline passed");
      }
    });
    self->stream_.async_write(std::move(buffers), [self](const std::error_code& ec, std::size_t n) {
      self->write_deadline_.cancel();
      if (self->closed_) {
        self->queue_.clear();  // the frame close() kept for this write
        self->writing_ = false;
        return;
      }
      if (ec) {
        self->close(ec.message());
        return;
      }
      self->queued_bytes_ -= n;
      Outgoing done = std::move(self->queue_.front());
      self->queue_.pop_front();
      if (done.close_after) {
        self->close(done.close_reason);
        return;
      }
      self->write_next();
      if (self->on_sent_ && !self->closed_) self->on_sent_();
    });
  };
  const auto payload_size = queue_.front().payload.bytes.size();
  if (write_throttle_ && payload_size > 0) {
    write_throttle_->acquire(payload_size, std::move(do_write));
  } else {
    do_write();
  }
}

void Connection::close(const std::string& reason) {
  if (closed_) return;
  closed_ = true;
  auto self = shared_from_this();
  std::error_code ignored;
  read_deadline_.cancel();
  write_deadline_.cancel();
  // No close_notify: the frames said what ends the conversation.
  stream_.socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  stream_.socket().close(ignored);
  // A write in flight still points into the front frame: the TLS stream
  // seals it a window at a time (tls::Stream::kBulkBytes) and holds the
  // caller's buffers until the write's handler runs. Keep that frame (and
  // its payload buffer, which the pool would give to a disk read) until
  // then; drop the rest now.
  if (writing_ && !queue_.empty()) {
    queue_.erase(std::next(queue_.begin()), queue_.end());
  } else {
    queue_.clear();
  }
  queued_bytes_ = 0;
  if (on_close_) on_close_(reason);
  // Handlers may be running right now (close from inside on_frame): drop
  // them, and the references they capture, only after the stack unwinds.
  asio::post(stream_.get_executor(), [self] {
    self->on_frame_ = nullptr;
    self->on_close_ = nullptr;
    self->on_sent_ = nullptr;
    self->next_on_frame_ = nullptr;
    self->verify_ = nullptr;  // it may hold its owner (CentralLink's does): no cycle left behind
  });
}

// ---------------------------------------------------------------------------

SyncClient::SyncClient(Limits limits, const tls::Identity* identity)
    : context_(tls::make_context(tls::Side::client, identity)),
      stream_(asio::ip::tcp::socket(io_), *context_),
      decoder_(limits) {}

void SyncClient::run(std::chrono::milliseconds timeout, const char* what) {
  io_.restart();
  io_.run_for(timeout);
  if (!io_.stopped()) {
    std::error_code ignored;
    stream_.socket().close(ignored);
    io_.run();  // let the cancelled operation finish
    throw Error(Errc::unavailable, fmt::format("{} timed out talking to {}", what, peer_));
  }
}

void SyncClient::connect(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout,
                         const std::function<std::optional<std::string>(const tls::KeyHash&)>& verify) {
  peer_ = host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
  asio::ip::tcp::resolver resolver(io_);
  std::error_code result = asio::error::would_block;
  bool connected = false;  // TCP is up: a failure now is the handshake's
  resolver.async_resolve(host, std::to_string(port), [&](const std::error_code& ec, auto endpoints) {
    if (ec) {
      result = ec;
      return;
    }
    asio::async_connect(stream_.socket(), endpoints, [&](const std::error_code& e, const auto&) {
      if (e) {
        result = e;
        return;
      }
      std::error_code ignored;
      stream_.socket().set_option(asio::ip::tcp::no_delay(true), ignored);
      connected = true;
      stream_.async_handshake(tls::Side::client, [&](const std::error_code& h) { result = h; });
    });
  });
  run(timeout, "connecting");
  if (result) {
    const std::string why = connected ? "TLS handshake failed: " + result.message() : result.message();
    ERR_clear_error();
    throw Error(Errc::unavailable, fmt::format("cannot reach {}: {}", peer_, why));
  }
  const auto key = tls::peer_key_hash(stream_.native_handle());
  if (!key) throw Error(Errc::protocol, fmt::format("{} presented no certificate", peer_));
  server_key_ = *key;
  if (verify) {
    if (auto refused = verify(server_key_)) {
      close();
      throw Error(Errc::unauthorized, *refused);
    }
  }
}

void SyncClient::send(const std::string& message, std::chrono::milliseconds timeout) {
  const auto header = encode_header({static_cast<std::uint32_t>(message.size()), 0});
  std::error_code result = asio::error::would_block;
  stream_.async_write({asio::buffer(header), asio::buffer(message)},
                      [&](const std::error_code& ec, std::size_t) { result = ec; });
  run(timeout, "sending");
  if (result) throw Error(Errc::unavailable, fmt::format("lost connection to {}: {}", peer_, result.message()));
}

std::string SyncClient::receive(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<std::uint8_t, std::size_t{64} * 1024> chunk{};
  while (true) {
    if (auto frame = decoder_.next()) return std::move(frame->message);
    if (!decoder_.error().empty()) {
      throw Error(Errc::protocol, fmt::format("bad frame from {}: {}", peer_, decoder_.error()));
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw Error(Errc::unavailable, fmt::format("no answer from {} in time", peer_));
    std::error_code result = asio::error::would_block;
    std::size_t got = 0;
    stream_.async_read_some(std::span(chunk), [&](const std::error_code& ec, std::size_t n) {
      result = ec;
      got = n;
    });
    run(left, "waiting for an answer");
    if (result) {
      throw Error(Errc::unavailable,
                  fmt::format("{} closed the connection{}", peer_, is_eof(result) ? "" : ": " + result.message()));
    }
    if (!decoder_.feed(std::span(chunk.data(), got))) {
      throw Error(Errc::protocol, fmt::format("bad frame from {}: {}", peer_, decoder_.error()));
    }
  }
}

void SyncClient::close() {
  std::error_code ignored;
  stream_.socket().close(ignored);
}

void tune_socket(asio::ip::tcp::socket& socket) {
  std::error_code ignored;
  socket.set_option(asio::ip::tcp::no_delay(true), ignored);
}

}  // namespace p2pshare::wire
