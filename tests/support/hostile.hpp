// Misbehaving clients for the hostile-network tests, header-only: many raw
// TCP connections to one server, each with a way of being a nuisance (random
// bytes, absurd length prefixes, silence, trickling, pipelining without
// reading), driven by one thread with poll(2), bounded in count and time.
// Loopback only. Every server speaks TLS first: the raw nuisances are bytes
// where a ClientHello belongs; hello_then_garbage handshakes first (with a
// key of its own), then sends a valid Hello and garbage inside TLS.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "p2pshare/tls.hpp"
#include "support/build_kind.hpp"
#include "support/temp_dir.hpp"
#include "support/tls_client.hpp"

namespace p2pshare::test {

enum class Nuisance { random_bytes, huge_length, varint_prefix, idle, trickle, hello_then_garbage };

inline sockaddr_in loopback_address(const std::string& host_port) {
  const auto colon = host_port.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(std::stoi(host_port.substr(colon + 1))));
  if (::inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    throw std::runtime_error("hostile clients target IPv4 loopback only: " + host_port);
  }
  if ((ntohl(addr.sin_addr.s_addr) >> 24) != 127) throw std::runtime_error("not a loopback address: " + host_port);
  return addr;
}

// A server must hold a descriptor per connection, and so must the test.
// A blocking TCP connection to `host_port` on loopback, for tests that send
// raw bytes; -1 if it cannot connect.
inline int raw_connect(const std::string& host_port) {
  const sockaddr_in sa = loopback_address(host_port);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True once the server closes the raw socket `fd` (EOF or reset) within `timeout`.
inline bool closed_by_server(int fd, std::chrono::milliseconds timeout) {
  return wait_for(
      [&] {
        char buffer[4096];
        const ssize_t n = ::recv(fd, buffer, sizeof(buffer), MSG_DONTWAIT);
        return n == 0 || (n < 0 && errno != EAGAIN);
      },
      timeout);
}

inline void raise_descriptor_limit() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

// Writes a frame with the project's framing (docs/protocol.md).
inline std::string frame(const std::string& message, std::uint32_t payload_length = 0) {
  std::string out(8, '\0');
  const auto length = static_cast<std::uint32_t>(message.size());
  for (int i = 0; i < 4; ++i) {
    out[i] = static_cast<char>(length >> (24 - 8 * i));
    out[4 + i] = static_cast<char>(payload_length >> (24 - 8 * i));
  }
  return out + message;
}

class HostileClients {
 public:
  // Opens `count` connections to `address`, cycling through `kinds`, and
  // keeps them misbehaving until stop() or the destructor. `hello` is a
  // valid first frame for hello_then_garbage.
  HostileClients(const std::string& address, std::size_t count, std::vector<Nuisance> kinds, std::string hello = {})
      : hello_(std::move(hello)) {
    raise_descriptor_limit();
    const sockaddr_in addr = loopback_address(address);
    const tls::Identity identity = tls::make_identity();
    for (std::size_t i = 0; i < count; ++i) {
      const Nuisance kind = kinds[i % kinds.size()];
      if (kind == Nuisance::hello_then_garbage) {
        // Handshaken here (blocking); what it sends later is sealed now.
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw std::runtime_error("socket() failed: " + std::string(std::strerror(errno)));
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
          throw std::runtime_error("connect() failed: " + std::string(std::strerror(errno)));
        }
        TlsClient tls(fd, &identity);
        std::string sealed = tls.seal(frame(hello_) + frame(std::string(40, '\xee')));
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns_.push_back({fd, kind, 0, false, std::move(sealed)});
        continue;
      }
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) throw std::runtime_error("socket() failed: " + std::string(std::strerror(errno)));
      ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));  // completes in the loop
      conns_.push_back({fd, kind, 0, false, {}});
    }
    thread_ = std::thread([this] { loop(); });
  }
  ~HostileClients() { stop(); }
  HostileClients(const HostileClients&) = delete;
  HostileClients& operator=(const HostileClients&) = delete;

  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    for (auto& c : conns_) {
      if (c.fd >= 0) ::close(c.fd);
      c.fd = -1;
    }
  }
  // Connections the server has closed so far.
  std::size_t closed_by_server() const { return closed_.load(); }
  std::size_t count() const { return conns_.size(); }

 private:
  struct Conn {
    int fd;
    Nuisance kind;
    std::size_t step;
    bool closed;
    std::string sealed;  // hello_then_garbage: its bytes, inside TLS
  };

  void send_some(Conn& c, const std::string& bytes) {
    if (::send(c.fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) < 0 && errno != EAGAIN && errno != EINPROGRESS &&
        errno != ENOTCONN) {
      mark_closed(c);
    }
  }
  void mark_closed(Conn& c) {
    if (c.closed) return;
    c.closed = true;
    ++closed_;
  }

  void loop() {
    std::mt19937_64 rng(42);
    std::vector<char> sink(64 * 1024);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);  // bounded regardless
    while (!stop_ && std::chrono::steady_clock::now() < deadline) {
      for (auto& c : conns_) {
        if (c.closed) continue;
        // Read and drop whatever the server says; EOF means it cut us off.
        const ssize_t n = ::recv(c.fd, sink.data(), sink.size(), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != ENOTCONN && errno != EINPROGRESS)) {
          mark_closed(c);
          continue;
        }
        switch (c.kind) {
          case Nuisance::random_bytes: {
            std::string junk(512, '\0');
            for (auto& ch : junk) ch = static_cast<char>(rng());
            send_some(c, junk);
            break;
          }
          case Nuisance::huge_length:
            if (c.step++ == 0) send_some(c, std::string("\xff\xff\xff\xff\x00\x00\x00\x00", 8));
            break;
          case Nuisance::varint_prefix:
            if (c.step++ == 0) send_some(c, std::string(10, '\xff'));
            break;
          case Nuisance::idle:
            break;
          case Nuisance::trickle:
            // A plausible 16-byte message, one byte per round (~10 per second).
            if (c.step < 24) send_some(c, std::string(1, c.step++ < 3 ? '\0' : '\x10'));
            break;
          case Nuisance::hello_then_garbage:
            if (c.step++ == 0) send_some(c, c.sealed);
            break;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // pacing of the nuisance, not synchronisation
    }
  }

  std::string hello_;
  std::vector<Conn> conns_;
  std::atomic<bool> stop_{false};
  std::atomic<std::size_t> closed_{0};
  std::thread thread_;
};

}  // namespace p2pshare::test
