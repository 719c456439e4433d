// p2pshare_central_load: a load generator for the central server that speaks
// the real protocol (docs/protocol.md: framing, Hello, CentralRequest) through
// the project's own wire and protocol code.
//
// Every connection is TLS 1.3, as the server requires (docs/protocol.md, "TLS
// profile"): one client SSL_CTX; each simulated peer presents its own Ed25519
// self-signed certificate (made before the timed phases) and so registers
// under its own key-derived peer id; query clients present none.
//
// Phases, each bounded:
//   1. connect + register: --peers TLS connections, Hello then Register; at
//      most --connect-concurrency in progress. Reports handshakes per second
//      (and each handshake's latency from connect() to its end).
//   2. announce: every peer announces --files-per-peer files out of a pool of
//      --files (peer p holds files p*k .. p*k+k-1 mod F, so each file has
//      peers*k/F holders). Small valid manifests: one 16 KiB chunk with a fake
//      hash. At most --announce-inflight requests outstanding in total, spread
//      round-robin over the peers' connections (the default 32 matches the 32
//      connections wrk keeps busy against opentracker).
//   3. load, for --seconds: every peer sends a Heartbeat every
//      --heartbeat-interval-ms (open loop, staggered), while --clients
//      connections (Hello only, never registered) each keep --pipeline
//      requests outstanding (1 = not pipelined: send, wait for the answer,
//      send the next), alternating ListPeers{file} and GetFile{file} on
//      random files. Every answer is checked: the holder count must equal the
//      number of peers that announced the file.
//   4. optional (--fresh-seconds and/or --fresh-connections): what a new
//      connection per request costs: --fresh-clients clients each open a new
//      TLS connection per ListPeers (TCP connect, handshake, Hello, ListPeers,
//      answer, close), until the time or the count is reached.
// With --peers 0 and --announced-peers N (after a restart, say), only phase 3
// runs: the same files are expected with the same holders.
//
// Single-threaded (epoll), so on a 2-core box the server gets the other core.
// One JSON object on stdout; progress on stderr. Exit 0 when every request got
// the right answer, 1 otherwise (the JSON still says what was measured), 2 on a
// bad command line.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "central.pb.h"
#include "p2pshare/cli.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/wire.hpp"

namespace {

using namespace p2pshare;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr std::uint32_t kFileSize = 16 * 1024;  // one chunk of the minimum size

enum class Op { handshake, reg, announce, heartbeat, list_peers, get_file, count };
const char* op_name(Op op) {
  switch (op) {
    case Op::handshake:
      return "handshake";
    case Op::reg:
      return "register";
    case Op::announce:
      return "announce";
    case Op::heartbeat:
      return "heartbeat";
    case Op::list_peers:
      return "list_peers";
    case Op::get_file:
      return "get_file";
    case Op::count:
      break;
  }
  return "?";
}

void log(const std::string& text) {
  std::cerr << "[central_load] " << text << std::endl;
}

[[noreturn]] void die(const std::string& text) {
  log("error: " + text);
  std::exit(1);
}

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// CPU time (user + system) a process has used so far, in seconds; -1 when
// it cannot be read. /proc/PID/stat fields 14 and 15, in clock ticks.
double cpu_seconds(int pid) {
  if (pid <= 0) return -1;
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (!f) return -1;
  char buf[2048];
  const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');  // the command name may hold spaces
  if (!p) return -1;
  unsigned long long utime = 0, stime = 0;
  // After ')': state is field 3; utime and stime are fields 14 and 15.
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2) return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// CPU time of `ppid` (with its reaped children's) plus that of its live
// children, in seconds; -1 when `ppid` cannot be read. For a PostgreSQL
// postmaster: every backend, the WAL writer, the checkpointer.
double tree_cpu_seconds(int ppid) {
  if (ppid <= 0) return -1;
  auto fields = [](int pid, int& parent, unsigned long long& own, unsigned long long& reaped) {
    FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
    if (!f) return false;
    char buf[2048];
    const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    const char* p = std::strrchr(buf, ')');
    if (!p) return false;
    unsigned long long ut = 0, st = 0;
    long long cut = 0, cst = 0;
    if (std::sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &parent, &ut, &st, &cut,
                    &cst) != 5)
      return false;
    own = ut + st;
    reaped = static_cast<unsigned long long>(cut + cst);
    return true;
  };
  int parent = 0;
  unsigned long long own = 0, reaped = 0;
  if (!fields(ppid, parent, own, reaped)) return -1;
  unsigned long long total = own + reaped;
  if (DIR* d = ::opendir("/proc")) {
    while (const dirent* e = ::readdir(d)) {
      const int pid = std::atoi(e->d_name);
      unsigned long long o = 0, r = 0;
      if (pid > 0 && pid != ppid && fields(pid, parent, o, r) && parent == ppid) total += o;
    }
    ::closedir(d);
  }
  return static_cast<double>(total) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Latencies of one request type in one phase.
struct Stats {
  std::vector<float> latency_ms;  // answered requests only
  std::uint64_t errors = 0;       // error answers, wrong answers
  std::map<std::string, std::uint64_t> error_kinds;

  void error(const std::string& kind) {
    ++errors;
    ++error_kinds[kind];
  }
  static double pct(std::vector<float>& sorted, double p) {
    if (sorted.empty()) return 0;
    const auto i = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)];
  }
  json report(double seconds) {
    std::sort(latency_ms.begin(), latency_ms.end());
    json j;
    j["count"] = latency_ms.size();
    j["seconds"] = seconds;
    j["rps"] = seconds > 0 ? static_cast<double>(latency_ms.size()) / seconds : 0.0;
    j["p50_ms"] = pct(latency_ms, 0.50);
    j["p90_ms"] = pct(latency_ms, 0.90);
    j["p99_ms"] = pct(latency_ms, 0.99);
    j["max_ms"] = latency_ms.empty() ? 0.0 : latency_ms.back();
    j["errors"] = errors;
    if (!error_kinds.empty()) j["error_kinds"] = error_kinds;
    return j;
  }
};

struct Pending {
  std::uint64_t request_id;
  Op op;
  std::uint32_t file;  // for answers that are checked against the file
  Clock::time_point sent;
  bool counted;  // sent inside the measured window
};

struct SslFree {
  void operator()(SSL* ssl) const noexcept { SSL_free(ssl); }
};

// TLS straight over the non-blocking socket (SSL_set_fd), not memory BIOs:
// OpenSSL does the recv/send itself, so there is no second copy of every
// record through our own buffers, and its WANT_READ / WANT_WRITE map one to
// one onto the epoll interest (EPOLLIN is always on; EPOLLOUT while the TCP
// connect, the handshake or a write waits for room). Memory BIOs would only
// pay off if we had to control the bytes on the wire, which a load generator
// does not.
struct Conn {
  int fd = -1;
  std::unique_ptr<SSL, SslFree> ssl;
  bool is_peer = false;
  std::size_t index = 0;
  bool connected = false;     // TCP
  bool handshaken = false;    // TLS
  bool want_write = false;    // the last SSL call wants EPOLLOUT
  Clock::time_point started;  // connect() called
  bool ready = false;         // registered (peer) or greeted (client)
  bool closed = false;
  wire::FrameDecoder decoder{protocol::kCentralLimits};
  std::string out;
  std::size_t out_off = 0;
  bool dirty = false;  // has unsent bytes queued this iteration
  bool polling_out = false;
  std::deque<Pending> pending;
  std::uint32_t gen = 0;  // bumped each time the slot gets a new socket
};

struct Options {
  std::string host;
  std::uint16_t port = 0;
  std::size_t peers = 1000;
  std::size_t announced_peers = 0;  // with --peers 0: how many announced before
  std::size_t files = 1000;
  std::size_t files_per_peer = 100;
  std::size_t announce_inflight = 32;
  std::size_t connect_concurrency = 256;
  double seconds = 10;
  std::size_t clients = 50;
  std::size_t pipeline = 1;
  double fresh_seconds = 0;
  std::size_t fresh_connections = 0;  // 0: bounded by fresh_seconds only
  int server_pid = 0;                 // > 0: report the server's CPU time per phase
  int tree_pid = 0;                   // > 0: also the CPU of this process and its children (a postmaster)
  std::string file_prefix = "p2pshare-bench-file-";  // another prefix, another pool of files
  std::size_t fresh_clients = 32;
  unsigned heartbeat_ms = 1000;
  double timeout = 600;
  std::uint64_t seed = 1;
};

class Load {
 public:
  explicit Load(Options o) : opt_(std::move(o)), rng_(opt_.seed), ctx_(tls::make_context(tls::Side::client, nullptr)) {
    // Every connection's slot is fixed up front: references stay valid.
    conns_.reserve(opt_.peers + opt_.clients + opt_.fresh_clients);
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) die("epoll_create1 failed");
    deadline_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.timeout));
    // File ids are computed exactly as the server does, from the manifest.
    const std::size_t holders_of = opt_.peers ? opt_.peers : opt_.announced_peers;
    ids_.reserve(opt_.files);
    hashes_.reserve(opt_.files);
    for (std::size_t f = 0; f < opt_.files; ++f) {
      const std::string seed_text = opt_.file_prefix + std::to_string(f);
      const auto hash =
          Sha256::digest(std::span(reinterpret_cast<const std::uint8_t*>(seed_text.data()), seed_text.size()));
      hashes_.push_back(std::string(reinterpret_cast<const char*>(hash.bytes.data()), hash.bytes.size()));
      ids_.push_back(to_bytes(compute_file_id(kFileSize, kFileSize, {hash})));
    }
    expected_holders_.assign(opt_.files, 0);
    for (std::size_t p = 0; p < holders_of; ++p) {
      for (std::size_t r = 0; r < opt_.files_per_peer; ++r) ++expected_holders_[file_of(p, r)];
    }
  }
  ~Load() {
    for (auto& c : conns_) close_conn(c, false);
    ::close(epfd_);
  }

  int run() {
    json out;
    out["server"] = opt_.host + ":" + std::to_string(opt_.port);
    out["peers"] = opt_.peers;
    out["files"] = opt_.files;
    out["files_per_peer"] = opt_.files_per_peer;
    const std::size_t holders_of = opt_.peers ? opt_.peers : opt_.announced_peers;
    out["holders_per_file"] = opt_.files ? static_cast<double>(holders_of * opt_.files_per_peer) / opt_.files : 0.0;
    out["transport"] = "one persistent TLS 1.3 connection per simulated peer and per client";
    bool complete = true;
    if (opt_.peers > 0) {
      // Each simulated peer's key and certificate: made here, not timed.
      const auto t0 = Clock::now();
      identities_.reserve(opt_.peers);
      for (std::size_t i = 0; i < opt_.peers; ++i) identities_.push_back(tls::make_identity());
      out["identities_seconds"] = ms_between(t0, Clock::now()) / 1000;
      log("made " + std::to_string(opt_.peers) + " Ed25519 identities in " +
          std::to_string(out["identities_seconds"].get<double>()) + " s (not timed)");
      complete = complete && phase_register(out);
      complete = complete && phase_announce(out);
    }
    complete = complete && phase_load(out);
    if (opt_.fresh_seconds > 0 || opt_.fresh_connections > 0) complete = complete && phase_fresh(out);
    std::uint64_t errors = 0;
    for (auto& [phase, per_op] : stats_) {
      for (auto& s : per_op) errors += s.errors;
    }
    out["errors"] = errors;
    out["disconnects"] = disconnects_;
    out["tls_cipher"] = cipher_;
    out["complete"] = complete;
    out["ok"] = complete && errors == 0 && disconnects_ == 0;
    std::cout << out.dump(2) << std::endl;
    return out["ok"].get<bool>() ? 0 : 1;
  }

 private:
  std::size_t file_of(std::size_t peer, std::size_t round) const {
    return (peer * opt_.files_per_peer + round) % opt_.files;
  }

  Stats& stat(const std::string& phase, Op op) {
    auto& v = stats_[phase];
    if (v.empty()) v.resize(static_cast<std::size_t>(Op::count));
    return v[static_cast<std::size_t>(op)];
  }

  bool past_deadline() const { return Clock::now() > deadline_; }

  // ---------------------------------------------------------------- sockets
  std::size_t open_conn(bool is_peer, std::size_t index) {
    const std::size_t slot = conns_.size();
    if (slot == conns_.capacity()) die("internal: more connections than reserved");
    conns_.emplace_back();
    connect_slot(slot, is_peer, index);
    return slot;
  }

  // A new connection in `slot` (a fresh one, or replacing a closed one: the
  // generation in the epoll cookie keeps stale events off the new socket).
  void connect_slot(std::size_t slot, bool is_peer, std::size_t index) {
    const auto started = Clock::now();
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die(std::string("socket: ") + std::strerror(errno) + " (raise ulimit -n?)");
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(opt_.port);
    if (::inet_pton(AF_INET, opt_.host.c_str(), &addr.sin_addr) != 1) die("--server must be an IPv4 address");
    const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    if (rc < 0 && errno != EINPROGRESS) die(std::string("connect: ") + std::strerror(errno));
    Conn& c = conns_[slot];
    const std::uint32_t gen = c.gen + 1;
    c = Conn{};
    c.gen = gen;
    c.fd = fd;
    c.is_peer = is_peer;
    c.index = index;
    c.started = started;
    c.ssl.reset(SSL_new(ctx_->native_handle()));
    if (!c.ssl || SSL_set_fd(c.ssl.get(), fd) != 1) die("SSL_new: " + tls::last_error());
    // c.out grows (and may move) between the retries of a write that wanted
    // room: the retry passes the same unsent bytes from their new address.
    SSL_set_mode(c.ssl.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (is_peer) {
      // Its own key: the server derives the peer id from it.
      const tls::Identity& id = identities_.at(index);
      if (SSL_use_certificate(c.ssl.get(), id.cert.get()) != 1 || SSL_use_PrivateKey(c.ssl.get(), id.key.get()) != 1)
        die("cannot use a peer's key pair: " + tls::last_error());
    }
    SSL_set_connect_state(c.ssl.get());
    c.connected = rc == 0;
    c.polling_out = !c.connected;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (c.connected ? 0u : static_cast<unsigned>(EPOLLOUT));
    ev.data.u64 = cookie(slot);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add failed");
    if (c.connected) advance_handshake(slot);  // sends the ClientHello
  }

  // Unregisters and closes; `polite`: sends close_notify first (not waited
  // for), as a client that is done does.
  void close_conn(Conn& c, bool polite) {
    if (c.fd < 0) return;
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, c.fd, nullptr);
    if (polite && c.ssl && c.handshaken) {
      SSL_shutdown(c.ssl.get());
      ERR_clear_error();
    }
    c.ssl.reset();
    ::close(c.fd);
    c.fd = -1;
  }

  // Why an SSL call failed, as one line (empties OpenSSL's error queue).
  static std::string ssl_failure(const Conn& c, int r) {
    const int saved_errno = errno;
    const int err = SSL_get_error(c.ssl.get(), r);
    if (err == SSL_ERROR_ZERO_RETURN) return "closed by the server (close_notify)";
    std::string queue = tls::last_error();
    if (!queue.empty()) return queue;
    if (err == SSL_ERROR_SYSCALL) return saved_errno != 0 ? std::strerror(saved_errno) : "closed by the server";
    return "SSL error " + std::to_string(err);
  }

  // Advances the TLS handshake with what the socket holds; once it is done,
  // what was queued meanwhile (Hello, the first request) goes out.
  void advance_handshake(std::size_t slot) {
    Conn& c = conns_[slot];
    if (c.closed || c.handshaken) return;
    ERR_clear_error();
    const int r = SSL_do_handshake(c.ssl.get());
    if (r == 1) {
      c.handshaken = true;
      c.want_write = false;
      stat(phase_, Op::handshake).latency_ms.push_back(static_cast<float>(ms_between(c.started, Clock::now())));
      if (cipher_.empty()) cipher_ = SSL_get_cipher_name(c.ssl.get());
      flush(slot);
      return;
    }
    const int err = SSL_get_error(c.ssl.get(), r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      c.want_write = err == SSL_ERROR_WANT_WRITE;
      set_pollout(c, slot, c.want_write);
      return;
    }
    const std::string why = ssl_failure(c, r);
    stat(phase_, Op::handshake).error("handshake failed: " + why);
    lost(slot, "TLS handshake: " + why);
  }

  std::uint64_t cookie(std::size_t slot) const { return std::uint64_t{conns_[slot].gen} << 32 | slot; }

  // Closes our side on purpose (a fresh-connection client is done).
  void hang_up(std::size_t slot) {
    Conn& c = conns_[slot];
    close_conn(c, true);
    c.closed = true;
  }

  void queue_frame(Conn& c, const std::string& message) {
    const auto header = wire::encode_header({static_cast<std::uint32_t>(message.size()), 0});
    c.out.append(reinterpret_cast<const char*>(header.data()), header.size());
    c.out.append(message);
    if (!c.dirty) {
      c.dirty = true;
      dirty_.push_back(&c - conns_.data());
    }
  }

  void send_request(Conn& c, pb::CentralRequest& request, Op op, std::uint32_t file, bool counted) {
    request.set_request_id(++next_request_id_);
    queue_frame(c, request.SerializeAsString());
    c.pending.push_back(Pending{next_request_id_, op, file, Clock::now(), counted});
  }

  void set_pollout(Conn& c, std::size_t slot, bool on) {
    if (c.polling_out == on) return;
    c.polling_out = on;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (on ? static_cast<unsigned>(EPOLLOUT) : 0u);
    ev.data.u64 = cookie(slot);
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  // Seals and sends what is queued (all the frames of this loop iteration
  // in one SSL_write: records of up to 16 KiB, one send each).
  void flush(std::size_t slot) {
    Conn& c = conns_[slot];
    c.dirty = false;
    if (c.closed || !c.handshaken) return;  // sent when the handshake ends
    c.want_write = false;
    while (c.out_off < c.out.size()) {
      std::size_t n = 0;
      ERR_clear_error();
      const int r = SSL_write_ex(c.ssl.get(), c.out.data() + c.out_off, c.out.size() - c.out_off, &n);
      if (r == 1) {
        c.out_off += n;
        continue;
      }
      const int err = SSL_get_error(c.ssl.get(), r);
      if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
        c.want_write = err == SSL_ERROR_WANT_WRITE;  // WANT_READ: retried after the next read
        break;
      }
      lost(slot, "TLS write: " + ssl_failure(c, r));
      return;
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    }
    set_pollout(c, slot, c.want_write);
  }

  void lost(std::size_t slot, const std::string& why) {
    Conn& c = conns_[slot];
    if (c.closed) return;
    c.closed = true;
    ++disconnects_;
    if (disconnects_ <= 5)
      log(std::string(c.is_peer ? "peer " : "client ") + std::to_string(c.index) + " lost: " + why);
    close_conn(c, false);
    // Outstanding requests on it will never be answered.
    for (auto& p : c.pending) stat(phase_, p.op).error("connection lost");
    c.pending.clear();
  }

  // One pass of the event loop: waits at most `wait_ms`.
  void poll_once(int wait_ms) {
    for (std::size_t slot : dirty_) flush(slot);
    dirty_.clear();
    epoll_event events[512];
    const int n = ::epoll_wait(epfd_, events, 512, wait_ms);
    if (n < 0) {
      if (errno == EINTR) return;
      die("epoll_wait failed");
    }
    for (int i = 0; i < n; ++i) {
      const std::size_t slot = events[i].data.u64 & 0xffffffffu;
      const auto gen = static_cast<std::uint32_t>(events[i].data.u64 >> 32);
      Conn& c = conns_[slot];
      if (c.closed || c.gen != gen) continue;  // stale: the slot has a new socket
      if (!c.connected && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          lost(slot, std::string("connect: ") + std::strerror(err));
          continue;
        }
        c.connected = true;
        if (on_connected_) on_connected_(slot);
        advance_handshake(slot);  // sends the ClientHello
        continue;                 // nothing to read yet; errors show up next time
      }
      if (events[i].events & EPOLLIN) read_from(slot);
      if (c.closed || c.gen != gen) continue;
      if ((events[i].events & EPOLLOUT) && c.connected) {
        if (!c.handshaken) {
          advance_handshake(slot);
        } else {
          flush(slot);
        }
      }
      if (events[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        read_from(slot);  // drain what is left, then notice the close
        if (!c.closed && c.gen == gen) lost(slot, "closed by the server");
      }
    }
    for (std::size_t slot : dirty_) flush(slot);
    dirty_.clear();
  }

  // Reads until OpenSSL wants more from the socket: SSL_read returns one
  // record at a time and may hold decrypted bytes the socket no longer
  // signals, so stopping earlier could leave answers unread.
  void read_from(std::size_t slot) {
    std::uint8_t buf[16384];  // one TLS record's worth
    const std::uint32_t gen = conns_[slot].gen;
    if (!conns_[slot].handshaken) {
      advance_handshake(slot);
      const Conn& c = conns_[slot];
      if (c.closed || c.gen != gen || !c.handshaken) return;
    }
    for (;;) {
      Conn& c = conns_[slot];
      if (c.closed || c.gen != gen) return;
      std::size_t n = 0;
      ERR_clear_error();
      const int r = SSL_read_ex(c.ssl.get(), buf, sizeof buf, &n);
      if (r != 1) {
        const int err = SSL_get_error(c.ssl.get(), r);
        if (err == SSL_ERROR_WANT_READ) break;
        if (err == SSL_ERROR_WANT_WRITE) {
          c.want_write = true;
          set_pollout(c, slot, true);
          break;
        }
        lost(slot, "TLS read: " + ssl_failure(c, r));
        return;
      }
      const auto now = Clock::now();
      if (!c.decoder.feed(std::span<const std::uint8_t>(buf, n))) {
        lost(slot, "bad frame from the server: " + c.decoder.error());
        return;
      }
      while (auto frame = c.decoder.next()) {
        on_answer(slot, frame->message, now);
        if (c.closed || c.gen != gen) return;
      }
    }
    // A write that wanted a read first is retried now.
    if (!conns_[slot].out.empty() && !conns_[slot].want_write) flush(slot);
  }

  void on_answer(std::size_t slot, const std::string& message, Clock::time_point now) {
    Conn& c = conns_[slot];
    pb::CentralResponse response;
    if (!response.ParseFromString(message)) {
      lost(slot, "unparseable answer");
      return;
    }
    if (c.pending.empty() || c.pending.front().request_id != response.request_id()) {
      stat(phase_, Op::reg).error("answer out of order");
      lost(slot, "answer for an unexpected request id " + std::to_string(response.request_id()));
      return;
    }
    const Pending p = c.pending.front();
    c.pending.pop_front();
    Stats& s = stat(phase_, p.op);
    if (response.has_error()) {
      s.error("error " + std::to_string(response.error().code()) + ": " + response.error().message());
    } else if (!check(c, p, response)) {
      s.error("wrong answer");
    } else if (p.counted) {
      s.latency_ms.push_back(static_cast<float>(ms_between(p.sent, now)));
    }
    if (p.op == Op::reg) {
      ++reg_answered_;
      if (response.has_registered()) {
        c.ready = true;
        ++registered_;
      }
    }
    if (on_answer_) on_answer_(slot, p);
  }

  // The answer must be the right kind and, for lookups, name every holder.
  bool check(const Conn& c, const Pending& p, const pb::CentralResponse& r) const {
    switch (p.op) {
      case Op::reg:  // under the id derived from the peer's own key
        return r.has_registered() && c.is_peer && r.registered().peer_id() == to_bytes(identities_[c.index].peer_id());
      case Op::announce:
      case Op::heartbeat:
        return r.has_ok();
      case Op::list_peers:
        return r.has_peer_list() && static_cast<std::size_t>(r.peer_list().peers_size()) == expected_holders_[p.file];
      case Op::get_file:
        return r.has_file() && r.file().manifest().size() == kFileSize &&
               r.file().manifest().chunk_hashes() == hashes_[p.file] &&
               static_cast<std::size_t>(r.file().holders_size()) == expected_holders_[p.file];
      case Op::handshake:
      case Op::count:
        break;
    }
    return false;
  }

  // The server's CPU time over a phase: how much of a core it got (on a busy
  // machine, less than it wanted) and what each answered request cost it,
  // which does not depend on how busy the machine was.
  void add_cpu(json& j, double cpu0, double secs, double cpu1 = -2) {
    if (cpu1 == -2) cpu1 = cpu_seconds(opt_.server_pid);
    if (cpu0 < 0 || cpu1 < 0 || secs <= 0) return;
    j["server_cpu_seconds"] = cpu1 - cpu0;
    j["server_cpu_share"] = (cpu1 - cpu0) / secs;
    j["load_generator_cpu_share"] = (cpu_seconds(::getpid()) - gen_cpu0_) / secs;
    const double count = j.contains("count") ? static_cast<double>(j["count"].get<std::size_t>()) : 0.0;
    if (count > 0) j["load_generator_cpu_us_per_request"] = (cpu_seconds(::getpid()) - gen_cpu0_) * 1e6 / count;
    const double tree1 = tree_cpu_seconds(opt_.tree_pid);
    if (tree_cpu0_ >= 0 && tree1 >= 0) {
      j["tree_cpu_seconds"] = tree1 - tree_cpu0_;
      j["tree_cpu_share"] = (tree1 - tree_cpu0_) / secs;
      if (count > 0) j["tree_cpu_us_per_request"] = (tree1 - tree_cpu0_) * 1e6 / count;
    }
    if (j.contains("count") && j["count"].get<std::size_t>() > 0) {
      j["server_cpu_us_per_request"] = (cpu1 - cpu0) * 1e6 / static_cast<double>(j["count"].get<std::size_t>());
    }
  }

  // Where a phase's CPU accounting starts: this process's and the tree's.
  void mark_cpu() {
    gen_cpu0_ = cpu_seconds(::getpid());
    tree_cpu0_ = tree_cpu_seconds(opt_.tree_pid);
  }

  // ------------------------------------------------------------ the phases
  bool phase_register(json& out) {
    phase_ = "register";
    log("connecting and registering " + std::to_string(opt_.peers) + " peers");
    peer_slots_.assign(opt_.peers, 0);
    std::size_t started = 0;
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds(opt_.server_pid);
    mark_cpu();
    auto start_more = [&] {
      while (started < opt_.peers && started - reg_answered_ - disconnects_ < opt_.connect_concurrency) {
        const std::size_t i = started++;
        const std::size_t slot = open_conn(true, i);
        peer_slots_[i] = slot;
        Conn& c = conns_[slot];
        // Queued now, sent (sealed) as soon as the handshake ends.
        queue_frame(c, protocol::hello(pb::PLANE_CENTRAL));
        pb::CentralRequest request;
        auto* reg = request.mutable_register_();
        reg->set_listen_port(static_cast<std::uint32_t>(10000 + i % 50000));
        send_request(c, request, Op::reg, 0, true);
      }
    };
    start_more();
    while (reg_answered_ + disconnects_ < opt_.peers && !past_deadline()) {
      poll_once(10);
      start_more();
    }
    const double secs = ms_between(t0, Clock::now()) / 1000;
    out["register"] = stat(phase_, Op::reg).report(secs);
    add_cpu(out["register"], cpu0, secs);
    out["register"]["concurrency"] = opt_.connect_concurrency;
    // Handshakes per second while connecting (TCP connect + full TLS 1.3
    // handshake with a client certificate); latency from connect() on.
    out["register"]["handshake"] = stat(phase_, Op::handshake).report(secs);
    out["register"]["handshakes_per_second"] = out["register"]["handshake"]["rps"];
    log("registered " + std::to_string(registered_) + " peers in " + std::to_string(secs) + " s");
    return registered_ == opt_.peers;
  }

  bool phase_announce(json& out) {
    phase_ = "announce";
    const std::size_t total = opt_.peers * opt_.files_per_peer;
    log("announcing " + std::to_string(total) + " (peer, file) pairs, " + std::to_string(opt_.announce_inflight) +
        " in flight");
    std::size_t next = 0, answered = 0;
    // Item k: peer k % N announces its (k / N)-th file, so consecutive items
    // go to different connections.
    auto send_next = [&] {
      const std::size_t k = next++;
      const std::size_t peer = k % opt_.peers, round = k / opt_.peers;
      const std::size_t f = file_of(peer, round);
      Conn& c = conns_[peer_slots_[peer]];
      if (c.closed) return;
      pb::CentralRequest request;
      auto* m = request.mutable_announce()->mutable_manifest();
      m->set_size(kFileSize);
      m->set_chunk_size(kFileSize);
      m->set_chunk_hashes(hashes_[f]);
      m->set_name("bench-" + std::to_string(f) + ".bin");
      send_request(c, request, Op::announce, static_cast<std::uint32_t>(f), true);
    };
    on_answer_ = [&](std::size_t, const Pending&) {
      ++answered;
      if (next < total) send_next();
    };
    const auto t0 = Clock::now();
    const double unix0 = unix_seconds();
    const double cpu0 = cpu_seconds(opt_.server_pid);
    mark_cpu();
    while (next < total && next < opt_.announce_inflight) send_next();
    const std::uint64_t lost_before = disconnects_;
    while (answered < total && !past_deadline()) {
      poll_once(10);
      if (disconnects_ != lost_before) break;  // a lost connection: stop and report it
    }
    on_answer_ = nullptr;
    const double secs = ms_between(t0, Clock::now()) / 1000;
    out["announce"] = stat(phase_, Op::announce).report(secs);
    add_cpu(out["announce"], cpu0, secs);
    out["announce"]["inflight"] = opt_.announce_inflight;
    // Wall clock of the phase, so that announces from several load
    // generators at once can be summed over the span they all ran in.
    out["announce"]["unix_start"] = unix0;
    out["announce"]["unix_end"] = unix0 + secs;
    out["announce"]["pipelined"] = "at most inflight requests outstanding in total, over many connections";
    log("announced " + std::to_string(answered) + " in " + std::to_string(secs) + " s");
    return answered == total;
  }

  bool phase_load(json& out) {
    // Clients: TLS without a certificate, Hello only; connected before the
    // clock starts so no handshake lands in the load's latencies.
    phase_ = "clients";
    std::vector<std::size_t> client_slots;
    for (std::size_t i = 0; i < opt_.clients; ++i) {
      const std::size_t slot = open_conn(false, i);
      queue_frame(conns_[slot], protocol::hello(pb::PLANE_CENTRAL));
      client_slots.push_back(slot);
    }
    {
      const auto until = Clock::now() + std::chrono::seconds(10);
      auto handshaking = [&] {
        return std::count_if(client_slots.begin(), client_slots.end(),
                             [&](std::size_t slot) { return !conns_[slot].closed && !conns_[slot].handshaken; });
      };
      while (handshaking() > 0 && Clock::now() < until && !past_deadline()) poll_once(10);
      if (handshaking() > 0) {
        log("clients: " + std::to_string(handshaking()) + " handshakes unfinished after 10 s");
        return false;
      }
    }
    phase_ = "load";
    std::vector<std::uint64_t> issued(conns_.size(), 0);
    std::uniform_int_distribution<std::size_t> pick(0, opt_.files ? opt_.files - 1 : 0);
    bool measuring = true;
    Clock::time_point t_end;
    auto client_send = [&](std::size_t slot) {
      Conn& c = conns_[slot];
      if (c.closed || opt_.files == 0) return;
      const auto f = static_cast<std::uint32_t>(pick(rng_));
      pb::CentralRequest request;
      Op op;
      if (issued[slot]++ % 2 == 0) {
        request.mutable_list_peers()->set_file_id(ids_[f]);
        op = Op::list_peers;
      } else {
        request.mutable_get_file()->set_file_id(ids_[f]);
        op = Op::get_file;
      }
      send_request(c, request, op, f, measuring);
    };
    on_answer_ = [&](std::size_t slot, const Pending& p) {
      if (!conns_[slot].is_peer && measuring && Clock::now() < t_end) client_send(slot);
      (void)p;
    };
    log("load: " + std::to_string(opt_.seconds) + " s, " + std::to_string(opt_.clients) + " clients (pipeline " +
        std::to_string(opt_.pipeline) + "), heartbeats from " + std::to_string(opt_.peers) + " peers every " +
        std::to_string(opt_.heartbeat_ms) + " ms");
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds(opt_.server_pid);
    mark_cpu();
    t_end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.seconds));
    for (std::size_t slot : client_slots) {
      for (std::size_t d = 0; d < opt_.pipeline; ++d) client_send(slot);
    }
    // Heartbeat s goes to peer s % N at t0 + s * interval / N: each peer once
    // per interval, evenly staggered, whatever the server's answers do.
    std::uint64_t hb_next = 0;
    const double hb_step_ns = opt_.peers ? 1e6 * opt_.heartbeat_ms / static_cast<double>(opt_.peers) : 0;
    while (Clock::now() < t_end && !past_deadline()) {
      if (opt_.peers > 0) {
        const double elapsed_ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
        const auto due = static_cast<std::uint64_t>(elapsed_ns / hb_step_ns) + 1;
        for (; hb_next < due; ++hb_next) {
          Conn& c = conns_[peer_slots_[hb_next % opt_.peers]];
          if (c.closed) continue;
          pb::CentralRequest request;
          request.mutable_heartbeat();
          send_request(c, request, Op::heartbeat, 0, true);
        }
      }
      poll_once(1);
    }
    const double secs = ms_between(t0, Clock::now()) / 1000;
    const double cpu1 = cpu_seconds(opt_.server_pid);
    measuring = false;
    // Drain what is still outstanding (answers checked, not timed), bounded.
    const auto drain_until = Clock::now() + std::chrono::seconds(10);
    auto outstanding = [&] {
      std::size_t n = 0;
      for (const auto& c : conns_) n += c.closed ? 0 : c.pending.size();
      return n;
    };
    while (outstanding() > 0 && Clock::now() < drain_until) poll_once(10);
    const bool drained = outstanding() == 0;
    on_answer_ = nullptr;
    json load;
    load["seconds"] = secs;
    load["clients"] = opt_.clients;
    load["pipeline"] = opt_.pipeline;
    load["pipelined"] = opt_.pipeline > 1;
    load["heartbeat_interval_ms"] = opt_.heartbeat_ms;
    double total = 0;
    for (Op op : {Op::heartbeat, Op::list_peers, Op::get_file}) {
      load[op_name(op)] = stat(phase_, op).report(secs);
      total += load[op_name(op)]["rps"].get<double>();
    }
    load["total_rps"] = total;
    add_cpu(load, cpu0, secs, cpu1);
    if (load.contains("server_cpu_seconds") && total > 0) {
      load["server_cpu_us_per_request"] = load["server_cpu_seconds"].get<double>() * 1e6 / (total * secs);
    }
    load["drained"] = drained;
    out["load"] = load;
    log("load done: " + std::to_string(total) + " requests/s");
    return drained;
  }

  // Clients that open a new connection for every request (TCP connect, TLS
  // handshake, Hello, ListPeers, answer, close), the way wrk drives
  // opentracker: latency includes the connect and the handshake. Not how
  // p2pshare talks to its central server; measured so the transport matches
  // the opentracker baseline, and to price a new connection. Bounded by
  // --fresh-seconds and/or --fresh-connections (requests in total).
  bool phase_fresh(json& out) {
    phase_ = "fresh";
    std::uniform_int_distribution<std::size_t> pick(0, opt_.files - 1);
    bool measuring = true;
    std::size_t open_now = 0, started = 0;
    const auto t0 = Clock::now();
    const double cpu0 = cpu_seconds(opt_.server_pid);
    mark_cpu();
    const bool timed = opt_.fresh_seconds > 0;
    const auto t_end =
        t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt_.fresh_seconds));
    auto more = [&] {
      return measuring && (!timed || Clock::now() < t_end) &&
             (opt_.fresh_connections == 0 || started < opt_.fresh_connections);
    };
    auto ask = [&](std::size_t slot) {
      Conn& c = conns_[slot];
      queue_frame(c, protocol::hello(pb::PLANE_CENTRAL));
      const auto f = static_cast<std::uint32_t>(pick(rng_));
      pb::CentralRequest request;
      request.mutable_list_peers()->set_file_id(ids_[f]);
      send_request(c, request, Op::list_peers, f, true);
    };
    on_answer_ = [&](std::size_t slot, const Pending&) {
      hang_up(slot);
      if (more()) {
        ++started;
        connect_slot(slot, false, slot);
        ask(slot);
      } else {
        --open_now;
      }
    };
    log("fresh connections: " + (timed ? std::to_string(opt_.fresh_seconds) + " s" : std::string("no time bound")) +
        ", " +
        (opt_.fresh_connections ? std::to_string(opt_.fresh_connections) + " requests at most"
                                : std::string("no count bound")) +
        ", " + std::to_string(opt_.fresh_clients) + " clients, one TLS connection per ListPeers");
    const std::uint64_t lost_before = disconnects_;
    for (std::size_t i = 0; i < opt_.fresh_clients && more(); ++i) {
      ++started;
      ask(open_conn(false, i));
      ++open_now;
    }
    // Until the time is up, or (count only) every request was answered.
    while (open_now > 0 && (!timed || Clock::now() < t_end) && !past_deadline() && disconnects_ == lost_before)
      poll_once(1);
    const double secs = ms_between(t0, Clock::now()) / 1000;
    measuring = false;
    const auto drain_until = Clock::now() + std::chrono::seconds(10);
    while (open_now > disconnects_ - lost_before && Clock::now() < drain_until) poll_once(10);
    on_answer_ = nullptr;
    const double cpu1 = cpu_seconds(opt_.server_pid);
    json j = stat(phase_, Op::list_peers).report(secs);
    add_cpu(j, cpu0, secs, cpu1);
    j["clients"] = opt_.fresh_clients;
    j["connections"] = started;
    j["transport"] =
        "new TLS 1.3 connection per request (TCP connect, full handshake, Hello, ListPeers, answer, "
        "close_notify + close)";
    j["handshake"] = stat(phase_, Op::handshake).report(secs);
    j["handshakes_per_second"] = j["handshake"]["rps"];
    out["fresh_list_peers"] = j;
    log("fresh connections: " + std::to_string(j["rps"].get<double>()) + " requests/s");
    return disconnects_ == lost_before;
  }

  Options opt_;
  std::mt19937_64 rng_;
  std::shared_ptr<asio::ssl::context> ctx_;  // one client SSL_CTX for every connection
  std::vector<tls::Identity> identities_;    // one per simulated peer
  std::string cipher_;                       // as negotiated by the first handshake
  int epfd_ = -1;
  Clock::time_point deadline_;
  std::vector<std::string> ids_;     // file id bytes per file index
  std::vector<std::string> hashes_;  // the one fake chunk hash per file
  std::vector<std::size_t> expected_holders_;
  std::vector<Conn> conns_;
  std::vector<std::size_t> dirty_;
  std::vector<std::size_t> peer_slots_;
  std::uint64_t next_request_id_ = 0;
  double gen_cpu0_ = 0;
  double tree_cpu0_ = -1;
  std::size_t registered_ = 0;
  std::size_t reg_answered_ = 0;
  std::uint64_t disconnects_ = 0;
  std::string phase_;
  std::map<std::string, std::vector<Stats>> stats_;
  std::function<void(std::size_t, const Pending&)> on_answer_;
  std::function<void(std::size_t)> on_connected_;
};

}  // namespace

int main(int argc, char** argv) {
  cxxopts::Options options("p2pshare_central_load", "Load generator for the p2pshare central server (loopback).");
  // clang-format off
  options.add_options()
      ("server", "central server HOST:PORT (IPv4)", cxxopts::value<std::string>())
      ("peers", "simulated peers (one connection each); 0: only query",
       cxxopts::value<std::size_t>()->default_value("1000"))
      ("announced-peers", "with --peers 0: how many peers announced earlier",
       cxxopts::value<std::size_t>()->default_value("0"))
      ("files", "distinct files", cxxopts::value<std::size_t>()->default_value("1000"))
      ("files-per-peer", "files each peer announces", cxxopts::value<std::size_t>()->default_value("100"))
      ("announce-inflight", "announces outstanding at once (all peers together)",
       cxxopts::value<std::size_t>()->default_value("32"))
      ("connect-concurrency", "peers connecting/registering at once",
       cxxopts::value<std::size_t>()->default_value("256"))
      ("seconds", "duration of the load phase", cxxopts::value<double>()->default_value("10"))
      ("clients", "client connections asking ListPeers/GetFile", cxxopts::value<std::size_t>()->default_value("50"))
      ("pipeline", "requests each client keeps outstanding (1 = not pipelined)",
       cxxopts::value<std::size_t>()->default_value("1"))
      ("fresh-seconds", "then this long with a new TLS connection per ListPeers (0: skip, or no time bound with --fresh-connections)",
       cxxopts::value<double>()->default_value("0"))
      ("fresh-connections", "then N ListPeers, each on a new TLS connection (0: bounded by --fresh-seconds)",
       cxxopts::value<std::size_t>()->default_value("0"))
      ("fresh-clients", "clients in the fresh-connection phase", cxxopts::value<std::size_t>()->default_value("32"))
      ("heartbeat-interval-ms", "each peer heartbeats this often during the load phase",
       cxxopts::value<unsigned>()->default_value("1000"))
      ("timeout", "bound on the whole run, seconds", cxxopts::value<double>()->default_value("600"))
      ("server-pid", "the server's PID: report its CPU time per phase", cxxopts::value<int>()->default_value("0"))
      ("seed", "random seed for the clients' file picks", cxxopts::value<std::uint64_t>()->default_value("1"))
      ("tree-pid", "also report the CPU time per phase of this process and its children (a PostgreSQL postmaster)",
       cxxopts::value<int>()->default_value("0"))
      ("file-prefix", "seed text of the file pool: load generators with different prefixes announce different files",
       cxxopts::value<std::string>()->default_value("p2pshare-bench-file-"))
      ("h,help", "this help");
  // clang-format on
  Options opt;
  try {
    auto args = options.parse(argc, argv);
    if (args.count("help")) {
      std::cout << options.help() << std::endl;
      return 0;
    }
    if (!args.count("server")) throw std::runtime_error("--server is required");
    const auto addr = cli::parse_address(args["server"].as<std::string>());
    opt.host = addr.host;
    opt.port = addr.port;
    opt.peers = args["peers"].as<std::size_t>();
    opt.announced_peers = args["announced-peers"].as<std::size_t>();
    opt.files = args["files"].as<std::size_t>();
    opt.files_per_peer = args["files-per-peer"].as<std::size_t>();
    opt.announce_inflight = std::max<std::size_t>(1, args["announce-inflight"].as<std::size_t>());
    opt.connect_concurrency = std::max<std::size_t>(1, args["connect-concurrency"].as<std::size_t>());
    opt.seconds = args["seconds"].as<double>();
    opt.clients = args["clients"].as<std::size_t>();
    opt.pipeline = std::max<std::size_t>(1, args["pipeline"].as<std::size_t>());
    opt.fresh_seconds = args["fresh-seconds"].as<double>();
    opt.fresh_connections = args["fresh-connections"].as<std::size_t>();
    opt.fresh_clients = std::max<std::size_t>(1, args["fresh-clients"].as<std::size_t>());
    if (opt.fresh_seconds < 0 || opt.fresh_seconds > 3600)
      throw std::runtime_error("--fresh-seconds must be in [0, 3600]");
    opt.heartbeat_ms = std::max(1u, args["heartbeat-interval-ms"].as<unsigned>());
    opt.timeout = args["timeout"].as<double>();
    opt.seed = args["seed"].as<std::uint64_t>();
    opt.server_pid = args["server-pid"].as<int>();
    opt.tree_pid = args["tree-pid"].as<int>();
    opt.file_prefix = args["file-prefix"].as<std::string>();
    if (opt.files == 0) throw std::runtime_error("--files must be at least 1");
    if (opt.files_per_peer > opt.files) throw std::runtime_error("--files-per-peer must not exceed --files");
    if (opt.seconds <= 0 || opt.seconds > 3600) throw std::runtime_error("--seconds must be in (0, 3600]");
    if (opt.peers + opt.clients + opt.fresh_clients > 60000) throw std::runtime_error("at most 60000 connections");
  } catch (const std::exception& e) {
    std::cerr << "p2pshare_central_load: " << e.what() << "\n";
    return 2;
  }
  try {
    Load load(opt);
    return load.run();
  } catch (const std::exception& e) {
    std::cerr << "p2pshare_central_load: " << e.what() << "\n";
    return 1;
  }
}
