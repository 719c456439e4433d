#include "p2pshare/tls_stream.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace p2pshare::tls {
namespace {

// The largest TLS 1.3 record on the wire (RFC 8446 5.2: 2^14 bytes of
// plaintext, up to 256 bytes of expansion, a 5-byte header): the receive
// buffer of a connection that only exchanges messages.
constexpr std::size_t kRecordBytes = 16384 + 256 + 5;
// A read of up to kSmallReceive with nothing buffered waits with a buffer of
// kIdleReceive (read_socket): enough for a small request's record whole.
constexpr std::size_t kSmallReceive = kRecordBytes + 4096;
constexpr std::size_t kIdleReceive = 1024;
// Plaintext buffers shorter than this (a frame's header and message) are
// gathered and sealed as one record rather than one record each.
constexpr std::size_t kGatherBytes = 4096;

std::error_code ssl_error(SSL* ssl, int result) {
  switch (SSL_get_error(ssl, result)) {
    case SSL_ERROR_ZERO_RETURN:
      return asio::error::eof;  // close_notify
    case SSL_ERROR_SSL: {
      const unsigned long code = ERR_get_error();
      ERR_clear_error();
      if (code == 0) return stream_truncated();
      return {static_cast<int>(code), asio::error::get_ssl_category()};
    }
    default:
      // Our BIO never fails a call: anything else is the other side's end
      // of the stream where OpenSSL did not expect one.
      ERR_clear_error();
      return stream_truncated();
  }
}

}  // namespace

std::error_code stream_truncated() {
  return asio::ssl::error::stream_truncated;
}

struct Stream::State : std::enable_shared_from_this<State> {
  explicit State(asio::ip::tcp::socket s) : socket(std::move(s)) {}
  ~State() {
    if (ssl != nullptr) SSL_free(ssl);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  asio::ip::tcp::socket socket;
  SSL* ssl = nullptr;

  // Ciphertext received and not yet taken by OpenSSL: in[in_head, in_tail).
  std::unique_ptr<std::uint8_t[]> in;
  std::size_t in_capacity = 0;
  std::size_t in_head = 0;
  std::size_t in_tail = 0;
  bool last_read_filled = false;  // the last recv filled its buffer: more may be waiting
  bool peer_eof = false;          // the socket reported the other side's FIN

  // Ciphertext OpenSSL produced: `staging` fills while `sending` is with the kernel.
  std::vector<std::uint8_t> staging;
  std::vector<std::uint8_t> sending;
  bool socket_writing = false;
  std::error_code write_error;

  // The read side: one handshake or read at a time.
  enum class Reading { none, handshake, some, all };
  Reading reading = Reading::none;
  std::span<std::uint8_t> read_into;
  std::size_t read_got = 0;
  Handler handshake_done;
  IoHandler read_done;

  // The write side: one write at a time.
  std::vector<asio::const_buffer> write_buffers;
  std::size_t write_index = 0;
  std::size_t write_offset = 0;
  std::size_t write_total = 0;
  IoHandler write_done;
  std::vector<std::uint8_t> gather;

  void post(std::function<void()> fn) { asio::post(socket.get_executor(), std::move(fn)); }

  // The caller's handlers wait here, not in the socket operations, and they
  // usually hold the object that owns this stream: a cycle the completion
  // breaks. When a socket operation is destroyed without running (its
  // io_context is destroyed first), its Pending drops the handlers of that
  // side, as asio does for the handlers it holds itself, so the cycle goes
  // too.
  enum class Direction { read, write };
  class Pending {
   public:
    Pending(std::shared_ptr<State> state, Direction side) : state_(std::move(state)), side_(side) {}
    Pending(Pending&& other) noexcept : state_(std::move(other.state_)), side_(other.side_) {}
    Pending(const Pending&) = delete;
    Pending& operator=(const Pending&) = delete;
    Pending& operator=(Pending&&) = delete;
    ~Pending() {
      if (state_) state_->abandon(side_);
    }
    // The operation ran: the state goes on with it.
    std::shared_ptr<State> take() { return std::move(state_); }

   private:
    std::shared_ptr<State> state_;
    Direction side_;
  };

  void abandon(Direction side) {
    // Moved out first: destroying a handler may destroy the Stream, whose
    // destructor clears these same members.
    Handler handshake;
    IoHandler read;
    IoHandler write;
    if (side == Direction::read) {
      handshake = std::move(handshake_done);
      read = std::move(read_done);
      handshake_done = nullptr;
      read_done = nullptr;
      reading = Reading::none;
    } else {
      write = std::move(write_done);
      write_done = nullptr;
    }
  }

  // ---- the BIO OpenSSL reads from and writes to -------------------------

  static int bio_write(BIO* bio, const char* data, int length) {
    auto* self = static_cast<State*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    self->staging.insert(self->staging.end(), data, data + length);
    return length;
  }

  static int bio_read(BIO* bio, char* out, int length) {
    auto* self = static_cast<State*>(BIO_get_data(bio));
    BIO_clear_retry_flags(bio);
    const std::size_t have = self->in_tail - self->in_head;
    if (have == 0) {
      BIO_set_retry_read(bio);
      return -1;
    }
    const std::size_t n = std::min(have, static_cast<std::size_t>(length));
    std::memcpy(out, self->in.get() + self->in_head, n);
    self->in_head += n;
    if (self->in_head == self->in_tail) self->in_head = self->in_tail = 0;
    return static_cast<int>(n);
  }

  static long bio_ctrl(BIO* bio, int command, long /*num*/, void* /*ptr*/) {
    auto* self = static_cast<State*>(BIO_get_data(bio));
    switch (command) {
      case BIO_CTRL_FLUSH:
        return 1;
      case BIO_CTRL_PENDING:
        return static_cast<long>(self->in_tail - self->in_head);
      default:
        return 0;
    }
  }

  static int bio_create(BIO* bio) {
    BIO_set_init(bio, 1);
    return 1;
  }

  static const BIO_METHOD* bio_method() {
    static const BIO_METHOD* method = [] {
      BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "p2pshare buffers");
      if (m == nullptr || BIO_meth_set_write(m, bio_write) != 1 || BIO_meth_set_read(m, bio_read) != 1 ||
          BIO_meth_set_ctrl(m, bio_ctrl) != 1 || BIO_meth_set_create(m, bio_create) != 1) {
        throw std::bad_alloc();
      }
      return m;
    }();
    return method;
  }

  // ---- reading ----------------------------------------------------------

  void finish_handshake(const std::error_code& ec) {
    reading = Reading::none;
    if (!handshake_done) return;
    post([done = std::move(handshake_done), ec] { done(ec); });
    handshake_done = nullptr;
  }

  void finish_read(const std::error_code& ec) {
    const std::size_t got = read_got;
    reading = Reading::none;
    read_into = {};
    read_got = 0;
    if (!read_done) return;
    post([done = std::move(read_done), ec, got] { done(ec, got); });
    read_done = nullptr;
  }

  void finish_reading(const std::error_code& ec) {
    if (reading == Reading::handshake) {
      finish_handshake(ec);
    } else {
      finish_read(ec);
    }
  }

  void start_read(Reading kind, std::span<std::uint8_t> destination, IoHandler handler) {
    reading = kind;
    read_into = destination;
    read_got = 0;
    read_done = std::move(handler);
    if (destination.empty()) {
      finish_read({});
      return;
    }
    drive_read();
  }

  // Runs the read side as far as the bytes at hand allow; asks the socket
  // for more when OpenSSL needs them.
  void drive_read() {
    if (reading == Reading::handshake) {
      ERR_clear_error();
      const int result = SSL_do_handshake(ssl);
      pump_write();  // our next flight, if the step made one
      if (result == 1) {
        finish_handshake({});
        return;
      }
      if (SSL_get_error(ssl, result) != SSL_ERROR_WANT_READ) {
        finish_handshake(ssl_error(ssl, result));
        return;
      }
    } else {
      std::error_code failed;
      while (read_got < read_into.size()) {
        std::size_t n = 0;
        ERR_clear_error();
        const int result = SSL_read_ex(ssl, read_into.data() + read_got, read_into.size() - read_got, &n);
        if (result == 1) {
          read_got += n;
          continue;
        }
        if (SSL_get_error(ssl, result) != SSL_ERROR_WANT_READ) failed = ssl_error(ssl, result);
        break;
      }
      // Answers to the other side's post-handshake messages (a KeyUpdate).
      if (!staging.empty()) pump_write();
      if (failed) {
        finish_read(failed);
        return;
      }
      if (staging.size() > kMaxUnsent) {
        finish_read(std::make_error_code(std::errc::no_buffer_space));
        return;
      }
      if (read_got == read_into.size() || (read_got > 0 && reading == Reading::some)) {
        finish_read({});
        return;
      }
    }
    if (peer_eof) {
      finish_reading(stream_truncated());
      return;
    }
    read_socket();
  }

  // What the next recv should have room for: a record, and for a read of
  // more than that (chunk payloads) as much of it as kBulkBytes allows,
  // so one recv takes many records.
  std::size_t receive_want() const {
    std::size_t want = kRecordBytes;
    if (reading != Reading::handshake) want += std::min(kBulkBytes, read_into.size() - read_got);
    return want;
  }

  void grow_in(std::size_t want) {
    if (in_capacity >= want) return;
    auto bigger = std::make_unique_for_overwrite<std::uint8_t[]>(want);
    if (in_tail > 0) std::memcpy(bigger.get(), in.get(), in_tail);
    in = std::move(bigger);
    in_capacity = want;
  }

  void read_socket() {
    if (in_head > 0) {
      std::memmove(in.get(), in.get() + in_head, in_tail - in_head);
      in_tail -= in_head;
      in_head = 0;
    }
    const std::size_t want = receive_want();
    // Nothing buffered, a small read (a frame header, a request) and the
    // last recv did not fill its buffer: wait for the next bytes with a
    // small buffer, so an idle connection (most of a central server's, each
    // waiting for its next heartbeat) does not hold a record's worth. A
    // bulk connection's larger buffer is kept: its next payload would need
    // it again.
    if (in_tail == 0 && want <= kSmallReceive && in_capacity <= kSmallReceive && !last_read_filled) {
      if (in_capacity != kIdleReceive) {
        in = std::make_unique_for_overwrite<std::uint8_t[]>(kIdleReceive);
        in_capacity = kIdleReceive;
      }
    } else {
      grow_in(want);
    }
    const std::size_t space = in_capacity - in_tail;
    socket.async_read_some(asio::buffer(in.get() + in_tail, space),
                           [pending = Pending(shared_from_this(), Direction::read), space](const std::error_code& ec,
                                                                                           std::size_t n) mutable {
                             const auto self = pending.take();
                             self->last_read_filled = n == space;
                             if (self->reading == Reading::none) return;
                             if (ec == asio::error::eof) {
                               self->peer_eof = true;
                             } else if (ec) {
                               self->finish_reading(ec);
                               return;
                             }
                             self->in_tail += n;
                             self->drive_read();
                           });
  }

  // ---- writing ----------------------------------------------------------

  bool seal(const std::uint8_t* data, std::size_t length) {
    std::size_t written = 0;
    ERR_clear_error();
    const int result = SSL_write_ex(ssl, data, length, &written);
    if (result != 1 || written != length) {
      write_error = ssl_error(ssl, result);
      if (!write_error) write_error = stream_truncated();
      return false;
    }
    return true;
  }

  // Seals up to kBulkBytes more of the write in progress into `staging`.
  bool seal_more() {
    std::size_t budget = kBulkBytes;
    while (budget > 0 && write_index < write_buffers.size()) {
      const auto& buffer = write_buffers[write_index];
      const auto* data = static_cast<const std::uint8_t*>(buffer.data()) + write_offset;
      const std::size_t left = buffer.size() - write_offset;
      if (left == 0) {
        ++write_index;
        write_offset = 0;
        continue;
      }
      if (write_offset == 0 && left < kGatherBytes) {
        gather.insert(gather.end(), data, data + left);
        write_total += left;
        budget -= std::min(budget, left);
        ++write_index;
        continue;
      }
      if (!gather.empty()) {
        if (!seal(gather.data(), gather.size())) return false;
        gather.clear();
      }
      const std::size_t n = std::min(left, budget);
      if (!seal(data, n)) return false;
      write_offset += n;
      write_total += n;
      budget -= n;
      // A buffer sealed to its end is done now, not on the next call: a
      // write whose last byte fills the budget exactly has nothing left to
      // seal, and pump_write must see it complete.
      if (write_offset == buffer.size()) {
        ++write_index;
        write_offset = 0;
      }
    }
    if (!gather.empty()) {
      const bool ok = seal(gather.data(), gather.size());
      gather.clear();
      if (!ok) return false;
    }
    return true;
  }

  void finish_write(const std::error_code& ec) {
    write_buffers.clear();
    if (!write_done) return;
    post([done = std::move(write_done), ec, n = write_total] { done(ec, n); });
    write_done = nullptr;
  }

  // Hands `staging` to the socket when it is free; seals the next part of
  // the write in progress once everything before it is out.
  void pump_write() {
    if (socket_writing) return;
    if (write_done && write_error) {
      finish_write(write_error);
      return;
    }
    if (staging.empty() && write_done) {
      if (write_index == write_buffers.size()) {
        finish_write({});
        return;
      }
      if (!seal_more()) {
        finish_write(write_error);
        return;
      }
      // Only empty buffers were left: nothing to send, the write is done.
      if (staging.empty() && write_index == write_buffers.size()) {
        finish_write({});
        return;
      }
    }
    if (staging.empty() || write_error) return;
    std::swap(staging, sending);
    socket_writing = true;
    asio::async_write(
        socket, asio::buffer(sending),
        [pending = Pending(shared_from_this(), Direction::write)](const std::error_code& ec, std::size_t) mutable {
          const auto self = pending.take();
          self->socket_writing = false;
          self->sending.clear();
          if (ec) {
            self->write_error = ec;
            if (self->write_done) self->finish_write(ec);
            return;
          }
          self->pump_write();
        });
  }
};

Stream::Stream(asio::ip::tcp::socket socket, asio::ssl::context& context)
    : state_(std::make_shared<State>(std::move(socket))) {
  SSL* ssl = SSL_new(context.native_handle());
  if (ssl == nullptr) throw std::bad_alloc();
  state_->ssl = ssl;
  BIO* bio = BIO_new(State::bio_method());
  if (bio == nullptr) throw std::bad_alloc();
  BIO_set_data(bio, state_.get());
  SSL_set_bio(ssl, bio, bio);  // one BIO both ways: the SSL takes its one reference
  // OpenSSL takes as much of our buffer per call as its own can hold, not
  // one record header and then one body.
  SSL_set_read_ahead(ssl, 1);
}

Stream::~Stream() {
  std::error_code ignored;
  state_->read_done = nullptr;
  state_->handshake_done = nullptr;
  state_->write_done = nullptr;
  state_->socket.close(ignored);
}

asio::ip::tcp::socket& Stream::socket() {
  return state_->socket;
}

SSL* Stream::native_handle() {
  return state_->ssl;
}

asio::any_io_executor Stream::get_executor() {
  return state_->socket.get_executor();
}

void Stream::async_handshake(Side side, Handler handler) {
  auto& s = *state_;
  if (side == Side::server) {
    SSL_set_accept_state(s.ssl);
  } else {
    SSL_set_connect_state(s.ssl);
  }
  s.reading = State::Reading::handshake;
  s.handshake_done = std::move(handler);
  s.drive_read();
}

void Stream::async_read_some(std::span<std::uint8_t> destination, IoHandler handler) {
  state_->start_read(State::Reading::some, destination, std::move(handler));
}

void Stream::async_read(std::span<std::uint8_t> destination, IoHandler handler) {
  state_->start_read(State::Reading::all, destination, std::move(handler));
}

void Stream::async_write(std::vector<asio::const_buffer> buffers, IoHandler handler) {
  auto& s = *state_;
  s.write_buffers = std::move(buffers);
  s.write_index = 0;
  s.write_offset = 0;
  s.write_total = 0;
  s.write_done = std::move(handler);
  s.pump_write();
}

}  // namespace p2pshare::tls
