// A TLS 1.3 client for tests that speak frames by hand over a raw socket:
// it handshakes over the socket (blocking, with a deadline), then turns
// plaintext into the bytes to put on the wire (seal) and received bytes into
// plaintext (open), so a test keeps full control of when and how much it
// sends. Header-only; memory BIOs, no Asio.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "p2pshare/tls.hpp"

namespace p2pshare::test {

// One end of a TLS connection over a raw socket, either side. A server end
// needs an identity; a client end presents one only if given.
class TlsStream {
 public:
  TlsStream(int fd, tls::Side side, const tls::Identity* identity)
      : fd_(fd), context_(tls::make_context(side, identity)), ssl_(SSL_new(context_->native_handle())) {
    // As the servers do (wire::tune_socket): without it, a small frame sent
    // right after the handshake's last flight waits for the other side's
    // delayed ACK, 40 ms a connection.
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in, -1);
    SSL_set_bio(ssl_.get(), in, out);
    in_ = in;
    out_ = out;
    if (side == tls::Side::client) {
      SSL_set_connect_state(ssl_.get());
    } else {
      SSL_set_accept_state(ssl_.get());
    }
  }
  TlsStream(const TlsStream&) = delete;
  TlsStream& operator=(const TlsStream&) = delete;
  virtual ~TlsStream() = default;

  // Advances the handshake with what the socket holds now, without
  // blocking. True once it is done; throws std::runtime_error if it failed
  // or the other side closed.
  bool step() {
    if (done_) return true;
    std::string wire;
    if (receive_raw(std::chrono::steady_clock::now(), &wire) && !wire.empty()) {
      BIO_write(in_, wire.data(), static_cast<int>(wire.size()));
    }
    const int r = SSL_do_handshake(ssl_.get());
    send_all(drain());
    if (r == 1) {
      done_ = true;
      peer_key = tls::peer_key_hash(ssl_.get());
      return true;
    }
    if (SSL_get_error(ssl_.get(), r) != SSL_ERROR_WANT_READ) {
      throw std::runtime_error("TLS handshake failed: " + tls::last_error());
    }
    if (closed_) throw std::runtime_error("TLS handshake: the other side closed");
    return false;
  }
  // Blocks until the handshake is done; throws if it fails or is too slow.
  void handshake(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!step()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("TLS handshake: the other side was silent");
      pollfd p{fd_, POLLIN, 0};
      ::poll(&p, 1, static_cast<int>(std::min<long>(left.count(), 100)));
    }
  }
  bool done() const { return done_; }

  // The bytes that carry `plain` (whole TLS records).
  std::string seal(std::string_view plain) {
    std::size_t done = 0;
    while (done < plain.size()) {
      std::size_t n = 0;
      if (SSL_write_ex(ssl_.get(), plain.data() + done, plain.size() - done, &n) != 1) {
        throw std::runtime_error("TLS write failed: " + tls::last_error());
      }
      done += n;
    }
    return drain();
  }
  // Plaintext from bytes received.
  std::string open(std::string_view wire) {
    if (!wire.empty()) BIO_write(in_, wire.data(), static_cast<int>(wire.size()));
    std::string plain;
    char buffer[16384];
    std::size_t n = 0;
    while (SSL_read_ex(ssl_.get(), buffer, sizeof(buffer), &n) == 1) plain.append(buffer, n);
    ERR_clear_error();
    return plain;
  }
  // Rotates our sending keys and asks the other side to rotate its own:
  // sends the KeyUpdate now.
  bool request_key_update() {
    if (SSL_key_update(ssl_.get(), SSL_KEY_UPDATE_REQUESTED) != 1 || SSL_do_handshake(ssl_.get()) != 1) return false;
    send_all(drain());
    return true;
  }
  // Seals and sends all of `plain` (blocking).
  void send(std::string_view plain) { send_all(seal(plain)); }
  // Plaintext received until `want` bytes are there, the deadline passes or
  // the other side closes: what came so far.
  std::string receive(std::size_t want, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string plain = open({});
    while (plain.size() < want && !closed_) {
      std::string wire;
      if (!receive_raw(deadline, &wire)) break;
      plain += open(wire);
    }
    return plain;
  }
  // The other side closed (seen by a read).
  bool closed() const { return closed_; }

  std::optional<tls::KeyHash> peer_key;

 private:
  struct SslFree {
    void operator()(SSL* ssl) const noexcept { SSL_free(ssl); }
  };

  std::string drain() {
    std::string bytes;
    char buffer[16384];
    int n = 0;
    while ((n = BIO_read(out_, buffer, sizeof(buffer))) > 0) bytes.append(buffer, static_cast<std::size_t>(n));
    return bytes;
  }
  void send_all(const std::string& bytes) {
    for (std::size_t sent = 0; sent < bytes.size();) {
      const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        pollfd p{fd_, POLLOUT, 0};
        ::poll(&p, 1, 100);
        continue;
      }
      if (n <= 0) throw std::runtime_error("send failed");
      sent += static_cast<std::size_t>(n);
    }
  }
  // Waits for bytes until `deadline` (now: just looks); false on silence or close.
  bool receive_raw(std::chrono::steady_clock::time_point deadline, std::string* into) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::max<long>(left.count(), 0))) <= 0) return false;
    char buffer[16384];
    const ssize_t n = ::recv(fd_, buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
    if (n <= 0) {
      closed_ = true;
      return false;
    }
    into->assign(buffer, static_cast<std::size_t>(n));
    return true;
  }

  int fd_;
  std::shared_ptr<asio::ssl::context> context_;
  std::unique_ptr<SSL, SslFree> ssl_;
  BIO* in_ = nullptr;   // owned by ssl_
  BIO* out_ = nullptr;  // owned by ssl_
  bool done_ = false;
  bool closed_ = false;
};

// A client end that handshakes at once (blocking). Throws
// std::runtime_error if the server refuses or is too slow.
class TlsClient : public TlsStream {
 public:
  explicit TlsClient(int fd, const tls::Identity* identity = nullptr,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5))
      : TlsStream(fd, tls::Side::client, identity) {
    handshake(timeout);
  }
};

}  // namespace p2pshare::test
