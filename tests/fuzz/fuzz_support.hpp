// Shared by the server fuzzers: a blocking loopback client with deadlines
// (plain POSIX, so the fuzzer thread never touches the servers' io_context),
// speaking TLS 1.3 through memory BIOs so the fuzzed bytes reach the frame
// and message decoders below TLS; a background io_context thread; temp dirs.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <google/protobuf/stubs/logging.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <asio.hpp>

#include "p2pshare/log.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/wire.hpp"

namespace fuzz {

// An invariant of the system under test failed: a finding, so abort() and
// let libFuzzer save the input.
#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "FINDING: %s\n", what.c_str());
  std::abort();
}

using Clock = std::chrono::steady_clock;

// A fresh directory under $TMPDIR (run.sh points it at its scratch dir) or /tmp.
inline std::filesystem::path make_temp_dir(const char* prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/" + prefix + "-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    std::abort();
  }
  return pattern;
}

// The servers log every refused peer; at fuzzing rates that is noise and
// costs time. P2PSHARE_FUZZ_LOG=1 keeps their normal logging.
// Protobuf's own complaints (invalid UTF-8 in a string field) likewise.
// P2PSHARE_FUZZ_LOG=debug shows everything the servers log.
inline void quiet_logs() {
  if (const char* level = std::getenv("P2PSHARE_FUZZ_LOG")) {
    if (std::string_view(level) == "debug") p2pshare::log::set_level(p2pshare::log::Level::debug);
    return;
  }
  p2pshare::log::set_level(p2pshare::log::Level::error);
  google::protobuf::SetLogHandler(nullptr);
}

// P2PSHARE_FUZZ_TRACE=1: print what each input sends (to check a seed, or
// to read a crashing input).
inline bool tracing() {
  static const bool on = std::getenv("P2PSHARE_FUZZ_TRACE") != nullptr;
  return on;
}
__attribute__((format(printf, 1, 2))) inline void trace(const char* format, ...) {
  if (!tracing()) return;
  va_list args;
  va_start(args, format);
  std::vfprintf(stderr, format, args);
  va_end(args);
}

// Runs an io_context on its own thread until stop().
class IoThread {
 public:
  IoThread() : guard_(asio::make_work_guard(io_)) {}
  asio::io_context& io() { return io_; }
  void start() {
    thread_ = std::thread([this] { io_.run(); });
  }
  void stop() {
    guard_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// A few fixed key pairs (from fixed seeds), so inputs come back as the same
// peers and two connections can be the same peer.
inline const p2pshare::tls::Identity& fixed_identity(unsigned i) {
  static std::vector<std::unique_ptr<p2pshare::tls::Identity>> made;
  constexpr unsigned kCount = 4;
  if (made.empty()) {
    for (unsigned k = 0; k < kCount; ++k) {
      std::array<std::uint8_t, 32> seed{};
      seed.fill(static_cast<std::uint8_t>(0xa0 + k));
      made.push_back(std::make_unique<p2pshare::tls::Identity>(
          p2pshare::tls::make_identity(std::span<const std::uint8_t, 32>(seed))));
    }
  }
  return *made[i % kCount];
}

// One TLS client context per identity presented (none: nullptr), made once.
inline asio::ssl::context& client_context(const p2pshare::tls::Identity* identity) {
  static std::vector<std::pair<const p2pshare::tls::Identity*, std::shared_ptr<asio::ssl::context>>> contexts;
  for (auto& [who, context] : contexts) {
    if (who == identity) return *context;
  }
  contexts.emplace_back(identity, p2pshare::tls::make_context(p2pshare::tls::Side::client, identity));
  return *contexts.back().second;
}

// One TCP connection to 127.0.0.1:port, with TLS over it (the handshake
// happens before the first byte is sent or read, presenting the identity
// given to present(), if any). Every wait has a deadline.
class Client {
 public:
  enum class Read { frame, closed, timeout, bad_frame };

  explicit Client(p2pshare::wire::Limits limits) : decoder_(limits) {}
  ~Client() { close(); }

  // The certificate to present; before the first send or read.
  void present(const p2pshare::tls::Identity* identity) { identity_ = identity; }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // A few tries: at thousands of loopback connections a second the kernel
  // now and then refuses one, which says nothing about the server (whose
  // liveness the callers check by its answers).
  bool connect(std::uint16_t port) {
    int error = 0;
    for (int attempt = 0; attempt < 3; ++attempt) {
      error = connect_once(port);
      if (error == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::fprintf(stderr, "connect to 127.0.0.1:%u: %s\n", port, std::strerror(error));
    return false;
  }

  // 0 or the errno.
  int connect_once(std::uint16_t port) {
    close();
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return errno;
    // Close with RST, not FIN: thousands of connections a second would
    // otherwise fill the ephemeral port range with TIME_WAIT sockets.
    const linger no_linger{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &no_linger, sizeof no_linger);
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    // A server that stops reading must not hang the fuzzer in send().
    const timeval send_timeout{1, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof send_timeout);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      const int error = errno;
      close();
      return error;
    }
    return 0;
  }

  bool is_open() const { return fd_ >= 0; }

  // Completes the TLS handshake if not done yet. False if the server closed
  // or failed it (then the connection counts as broken).
  bool secure() {
    if (ssl_) return handshaken_;
    if (fd_ < 0 || broken_) return false;
    ssl_.reset(SSL_new(client_context(identity_).native_handle()));
    in_ = BIO_new(BIO_s_mem());
    out_ = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(in_, -1);
    SSL_set_bio(ssl_.get(), in_, out_);
    SSL_set_connect_state(ssl_.get());
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (true) {
      const int r = SSL_do_handshake(ssl_.get());
      if (!send_wire(drain_out())) break;
      if (r == 1) return handshaken_ = true;
      if (SSL_get_error(ssl_.get(), r) != SSL_ERROR_WANT_READ || !receive_wire(deadline)) break;
    }
    ERR_clear_error();
    broken_ = true;
    eof_ = true;
    return false;
  }

  // False once the server has closed or reset the connection (not a finding:
  // servers close on bad input). The bytes travel inside TLS.
  bool send_raw(std::string_view bytes) {
    if (!secure() || broken_) return false;
    while (!bytes.empty()) {
      std::size_t n = 0;
      if (SSL_write_ex(ssl_.get(), bytes.data(), bytes.size(), &n) != 1) {
        ERR_clear_error();
        broken_ = true;
        return false;
      }
      bytes.remove_prefix(n);
    }
    return send_wire(drain_out());
  }

 private:
  std::string drain_out() {
    std::string bytes;
    char chunk[16384];
    int n = 0;
    while ((n = BIO_read(out_, chunk, sizeof chunk)) > 0) bytes.append(chunk, static_cast<std::size_t>(n));
    return bytes;
  }
  // Waits for ciphertext until `deadline` and hands it to TLS; false on
  // silence, EOF or reset.
  bool receive_wire(Clock::time_point deadline) {
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(left));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return false;
      const ssize_t n = ::recv(fd_, buffer_.data(), buffer_.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      BIO_write(in_, buffer_.data(), static_cast<int>(n));
      return true;
    }
  }
  bool send_wire(std::string_view bytes) {
    if (fd_ < 0 || broken_) return false;
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        broken_ = true;
        return false;
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

 public:
  bool send_frame(std::string_view message, std::string_view payload = {}) {
    const auto header = p2pshare::wire::encode_header(
        {static_cast<std::uint32_t>(message.size()), static_cast<std::uint32_t>(payload.size())});
    std::string bytes(reinterpret_cast<const char*>(header.data()), header.size());
    bytes.append(message);
    bytes.append(payload);
    return send_raw(bytes);
  }

  // No more bytes from us: the server sees EOF once it has read the rest.
  void finish_sending() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_WR);
  }

  // The next whole frame, or why there is none before `deadline`.
  Read read_frame(p2pshare::wire::FrameDecoder::Frame& out, Clock::time_point deadline) {
    if (!secure()) eof_ = true;
    while (true) {
      if (auto frame = decoder_.next()) {
        out = std::move(*frame);
        return Read::frame;
      }
      if (!decoder_.error().empty()) return Read::bad_frame;
      if (fd_ < 0 || eof_) return Read::closed;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return Read::timeout;
      pollfd p{fd_, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(left));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return Read::timeout;
      const ssize_t n = ::recv(fd_, buffer_.data(), buffer_.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // EOF or reset; frames already buffered are still returned above.
        eof_ = true;
        continue;
      }
      BIO_write(in_, buffer_.data(), static_cast<int>(n));
      std::size_t got = 0;
      while (SSL_read_ex(ssl_.get(), plain_.data(), plain_.size(), &got) == 1) {
        if (!decoder_.feed(std::span(plain_.data(), got))) return Read::bad_frame;
      }
      ERR_clear_error();
    }
  }

  const std::string& decode_error() const { return decoder_.error(); }

  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ssl_.reset();
    handshaken_ = false;
  }

 private:
  struct SslFree {
    void operator()(SSL* ssl) const noexcept { SSL_free(ssl); }
  };
  int fd_ = -1;
  bool broken_ = false;
  bool eof_ = false;
  const p2pshare::tls::Identity* identity_ = nullptr;
  std::unique_ptr<SSL, SslFree> ssl_;
  bool handshaken_ = false;
  BIO* in_ = nullptr;   // owned by ssl_
  BIO* out_ = nullptr;  // owned by ssl_
  p2pshare::wire::FrameDecoder decoder_;
  std::vector<std::uint8_t> buffer_ = std::vector<std::uint8_t>(256 * 1024);
  std::vector<std::uint8_t> plain_ = std::vector<std::uint8_t>(64 * 1024);
};

inline std::string hex(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    out.push_back(kDigits[static_cast<unsigned char>(c) >> 4]);
    out.push_back(kDigits[static_cast<unsigned char>(c) & 0xf]);
  }
  return out;
}

}  // namespace fuzz
