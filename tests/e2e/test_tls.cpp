// Encrypted, authenticated connections: ids are proven by keys, a central
// server's key is pinned or remembered, garbage instead of a handshake
// closes only that connection, a first-wave data dir moves to a key pair, and
// nothing of a file crosses loopback in clear.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include <catch2/catch.hpp>

#include "central.pb.h"
#include "e2e.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/wire.hpp"
#include "peer.pb.h"
#include "support/hostile.hpp"
#include "support/tls_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

namespace {

// The fingerprint a central server printed after "listening on".
std::string fingerprint_of(Process& central) {
  const auto fp = central.wait_for_line("fingerprint ", 5s);
  REQUIRE(fp);
  return *fp;
}

// The first flight of a TLS 1.3 client (its ClientHello record), as bytes.
std::string client_hello_bytes() {
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  {
    TlsStream tls(pair[0], tls::Side::client, nullptr);
    CHECK_FALSE(tls.step());
  }
  std::string bytes(16384, '\0');
  const ssize_t n = ::recv(pair[1], bytes.data(), bytes.size(), MSG_DONTWAIT);
  ::close(pair[0]);
  ::close(pair[1]);
  REQUIRE(n > 0);
  bytes.resize(static_cast<std::size_t>(n));
  return bytes;
}

}  // namespace

TEST_CASE("tls: the central server prints its fingerprint, and clients remember it on first contact", "[e2e][tls]") {
  Cluster c(1);
  const std::string fp = fingerprint_of(*c.central().process);
  CHECK(fp.size() == 64);
  CHECK(tls::key_hash_from_fingerprint(fp) == tls::key_hash_of_cert_file(c.central().data_dir / "identity.crt"));
  // The peer-server recorded it in its data dir; a client in its own.
  CHECK(read_file(c.peer(0).data_dir / "known_centrals") == c.central_addr() + " " + fp + "\n");
  const fs::path mine = c.path("client");
  REQUIRE(c.run({"list-files", "--central-server-addr", c.central_addr(), "--data-dir", mine.string()}).exit_code == 0);
  CHECK(read_file(mine / "known_centrals") == c.central_addr() + " " + fp + "\n");
  // Pinned with the right fingerprint: accepted, nothing recorded.
  const fs::path pinned = c.path("pinned");
  const auto r = c.run({"list-files", "--central-server-addr", c.central_addr(), "--data-dir", pinned.string(),
                        "--central-fingerprint", fp});
  CHECK(r.exit_code == 0);
  CHECK_FALSE(fs::exists(pinned / "known_centrals"));
}

TEST_CASE("tls: a central server whose key changed is refused by a peer-server and by list-files, naming both",
          "[e2e][tls]") {
  Cluster c(1);
  const std::string addr = c.central_addr();
  const std::string old_fp = fingerprint_of(*c.central().process);
  const fs::path client_dir = c.path("client");
  REQUIRE(c.run({"list-files", "--central-server-addr", addr, "--data-dir", client_dir.string()}).exit_code == 0);

  // Same address, new data dir: a new key.
  Cluster::kill(c.central());
  c.start_central(addr, c.path("impostor"));
  const std::string new_fp = fingerprint_of(*c.central().process);
  REQUIRE(new_fp != old_fp);

  const auto r = c.run({"list-files", "--central-server-addr", addr, "--data-dir", client_dir.string()});
  check_fails("list-files against a changed key", r, 1,
              {old_fp, new_fp, "known_centrals", "--central-fingerprint", addr});
  // The peer-server refuses it too (it keeps retrying, and never registers).
  CHECK(wait_for([&] { return contains_ci(c.peer(0).process->err(), new_fp); }, 10s));
  const std::string line = c.peer(0).process->err();
  CHECK(contains_ci(line, old_fp));
  CHECK(contains_ci(line, "known_centrals"));
  const auto peers = c.on_central("list-peers", {"--json", "--central-fingerprint", new_fp});
  REQUIRE(peers.exit_code == 0);
  CHECK(parse_json(peers).empty());
  // --central-fingerprint accepts the new key without touching the record.
  const auto pinned = c.run({"list-files", "--central-server-addr", addr, "--data-dir", client_dir.string(),
                             "--central-fingerprint", new_fp});
  CHECK(pinned.exit_code == 0);
  CHECK(read_file(client_dir / "known_centrals") == addr + " " + old_fp + "\n");
}

TEST_CASE("tls: --central-fingerprint with a wrong fingerprint is refused before anything is sent", "[e2e][tls]") {
  Cluster c(0);
  const std::string fp = fingerprint_of(*c.central().process);
  const std::string wrong(64, 'a');
  const auto r = c.run({"list-files", "--central-server-addr", c.central_addr(), "--central-fingerprint", wrong,
                        "--data-dir", c.path("client").string()});
  check_fails("list-files, wrong pin", r, 1, {wrong, fp});
  check_fails("malformed pin",
              c.run({"list-files", "--central-server-addr", c.central_addr(), "--central-fingerprint", "xyz"}), 2,
              {"--central-fingerprint"});
  // A peer-server pinned to the wrong key never registers (Register is never sent).
  const fs::path data = c.path("pinned-peer");
  Process peer({binary(), "peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0",
                "--data-dir", data.string(), "--central-fingerprint", wrong},
               c.logs());
  peer.wait_listening();
  CHECK(wait_for([&] { return contains_ci(peer.err(), wrong) && contains_ci(peer.err(), fp); }, 10s));
  const auto peers = c.on_central("list-peers", {"--json"});
  REQUIRE(peers.exit_code == 0);
  CHECK(parse_json(peers).empty());
  CHECK_FALSE(fs::exists(data / "known_centrals"));
}

TEST_CASE("tls: the peer plane refuses a peer without a certificate, or whose key is not its Hello's id",
          "[e2e][tls]") {
  Cluster c(1);
  const auto file = c.make_file("f.bin", 2 * kChunkSize, 3);
  const std::string id = c.register_file(0, file);
  pb::PeerMessage interested;
  interested.mutable_interested()->set_file_id(to_bytes(*file_id_from_hex(id)));
  const auto key = tls::make_identity();
  const auto other = tls::make_identity();
  struct Case {
    const char* what;
    const tls::Identity* presented;
    std::string claimed;
  };
  for (const auto& k : {Case{"no certificate", nullptr, to_bytes(key.peer_id())},
                        Case{"another's id", &key, to_bytes(other.peer_id())}}) {
    INFO(k.what);
    const int fd = raw_connect(c.peer(0).addr);
    REQUIRE(fd >= 0);
    TlsClient tls(fd, k.presented);
    // The peer-server proves its own key: the id the registry lists for it.
    REQUIRE(tls.peer_key);
    const auto status = parse_json(c.on_peer(0, "status", {"--json"}));
    CHECK(to_hex(peer_id_of_key_hash(*tls.peer_key)) == status["peer_id"].get<std::string>());
    tls.send(frame(protocol::hello(pb::PLANE_PEER, k.claimed)) + frame(interested.SerializeAsString()));
    const std::string answer = tls.receive(1 << 20, 5s);
    CHECK(tls.closed());
    CHECK(answer.find("certificate") != std::string::npos);  // the Error frame says why
    ::close(fd);
  }
  // The honest way in still works.
  const int fd = raw_connect(c.peer(0).addr);
  REQUIRE(fd >= 0);
  TlsClient tls(fd, &key);
  tls.send(frame(protocol::hello(pb::PLANE_PEER, to_bytes(key.peer_id()))) + frame(interested.SerializeAsString()));
  const std::string answer = tls.receive(8, 5s);
  CHECK(answer.size() >= 8);
  CHECK_FALSE(tls.closed());
  ::close(fd);
}

TEST_CASE("tls: a downloader refuses a source whose key is not the id the registry lists for it", "[e2e][tls]") {
  // peer0 shares the file then stops sharing it; peer1 is an honest
  // peer-server that does not have it; a stranger registers its own id at
  // peer1's address and announces the file; peer2 must find peer1's key
  // there, and refuse it. (The stranger never heartbeats: 5 s intervals keep
  // it live for the whole test.)
  ClusterOptions options;
  options.heartbeat_ms = 5000;
  Cluster c(3, options);
  const auto file = c.make_file("f.bin", 3 * kChunkSize, 5);
  const std::string id = c.register_file(0, file);
  REQUIRE(c.wait_holders(id, 1));
  const auto stranger_key = tls::make_identity();
  RawCentral stranger(c.central_addr(), &stranger_key);
  pb::CentralRequest get;
  get.mutable_get_file()->set_file_id(to_bytes(*file_id_from_hex(id)));
  const auto record = stranger.ask(get);
  REQUIRE(record.has_file());
  REQUIRE(c.on_peer(0, "stop-sharing", {"--file-id", id}).exit_code == 0);
  REQUIRE(wait_for([&] { return c.holders(id) <= 0; }, 10s));
  pb::CentralRequest reg;
  reg.mutable_register_()->set_listen_port(split(c.peer(1).addr).second);
  REQUIRE(stranger.ask(reg).has_registered());
  pb::CentralRequest announce;
  *announce.mutable_announce()->mutable_manifest() = record.file().manifest();
  REQUIRE(stranger.ask(announce).has_ok());
  REQUIRE(c.wait_holders(id, 1));

  const auto r = c.on_peer(2, "request-file", {"--file-id", id, "--out", c.path("got.bin").string()}, 60s);
  CHECK(r.exit_code != 0);
  CHECK_FALSE(fs::exists(c.path("got.bin")));
  CHECK(contains_ci(c.peer(2).process->err(), "not " + to_hex(stranger_key.peer_id()) + " as the registry lists"));
}

TEST_CASE("tls: garbage handshakes close that one connection, and both servers serve an honest client after",
          "[e2e][tls][hostile]") {
  Cluster c(2);
  const auto file = c.make_file("f.bin", 2 * kChunkSize + 9, 7);
  const std::string id = c.register_file(0, file);
  const std::string hello = client_hello_bytes();
  std::mt19937_64 rng(7);
  std::string random(2048, '\0');
  for (auto& ch : random) ch = static_cast<char>(rng());
  const auto started = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, int>> silent;  // (what, fd): closed only by the deadline
  for (const std::string& addr : {c.central_addr(), c.peer(0).addr}) {
    INFO(addr);
    for (const auto& [what, bytes] : {std::pair<std::string, std::string>{"random bytes", random},
                                      {"a truncated ClientHello", hello.substr(0, hello.size() / 2)},
                                      {"a ClientHello cut after its record header", hello.substr(0, 5)}}) {
      INFO(what);
      const int fd = raw_connect(addr);
      REQUIRE(fd >= 0);
      REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
      if (what == "random bytes") {
        CHECK(closed_by_server(fd, 3s));  // at once
        ::close(fd);
      } else {
        silent.emplace_back(what + " to " + addr, fd);
      }
    }
    // A whole ClientHello, then silence: cut by the first-frame deadline.
    const int fd = raw_connect(addr);
    REQUIRE(fd >= 0);
    REQUIRE(::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(hello.size()));
    silent.emplace_back("a ClientHello then silence to " + addr, fd);
  }
  // Meanwhile honest clients are served.
  CHECK(c.on_central("list-files").exit_code == 0);
  const auto out = c.path("got.bin");
  CHECK(c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()}).exit_code == 0);
  CHECK(files_equal(file, out));
  for (const auto& [what, fd] : silent) {
    INFO(what);
    CHECK(closed_by_server(fd, 15s));
    ::close(fd);
  }
  const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  INFO("the silent ones were cut after " << seconds << " s");
  CHECK(seconds < 14);
  CHECK(c.central().running());
  CHECK(c.peer(0).running());
  CHECK(c.on_central("list-files").exit_code == 0);
  CHECK(c.on_peer(0, "status").exit_code == 0);
}

TEST_CASE("tls: a first-wave data dir (peer.key only) moves to the key pair whose seed it is", "[e2e][tls]") {
  Cluster c(0);
  const fs::path data = c.path("old-peer");
  fs::create_directories(data);
  std::string seed(32, '\0');
  for (std::size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<char>(i * 7 + 1);
  {
    std::ofstream out(data / "peer.key", std::ios::binary);
    out << seed;
  }
  ::chmod((data / "peer.key").c_str(), 0600);
  const auto expected =
      tls::make_identity(std::span<const std::uint8_t, 32>(reinterpret_cast<const std::uint8_t*>(seed.data()), 32));
  Process peer({binary(), "peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0",
                "--data-dir", data.string()},
               c.logs());
  const std::string addr = peer.wait_listening();
  CHECK(fs::exists(data / "peer.key.old"));
  CHECK_FALSE(fs::exists(data / "peer.key"));
  CHECK(read_file(data / "peer.key.old") == seed);
  CHECK(tls::key_hash_of_cert_file(data / "identity.crt") == expected.key_hash);
  // It registers under the id its new key proves.
  CHECK(wait_for(
      [&] {
        const auto r = c.on_central("list-peers", {"--json"});
        if (r.exit_code != 0) return false;
        for (const auto& p : parse_json(r)) {
          if (p.value("peer_id", "") == to_hex(expected.peer_id())) return true;
        }
        return false;
      },
      10s));
  const auto status = c.run({"status", "--peer-addr", addr, "--data-dir", data.string(), "--json"});
  REQUIRE(status.exit_code == 0);
  CHECK(parse_json(status)["peer_id"] == to_hex(expected.peer_id()));
}

namespace {

// Everything TCP carries on `lo` to or from a set of ports, per direction
// (src port, dst port) in capture order: one AF_PACKET socket, one thread.
class LoopbackCapture {
 public:
  // Throws nothing; `available()` says whether the socket could be opened.
  LoopbackCapture() {
    fd_ = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
    if (fd_ < 0) {
      error_ = errno;
      return;
    }
    const int big = 64 * 1024 * 1024;
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    sockaddr_ll where{};
    where.sll_family = AF_PACKET;
    where.sll_protocol = htons(ETH_P_ALL);
    where.sll_ifindex = static_cast<int>(::if_nametoindex("lo"));
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&where), sizeof where) != 0) {
      error_ = errno;
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~LoopbackCapture() {
    stop();
    if (fd_ >= 0) ::close(fd_);
  }
  LoopbackCapture(const LoopbackCapture&) = delete;
  LoopbackCapture& operator=(const LoopbackCapture&) = delete;

  bool available() const { return fd_ >= 0; }
  int error() const { return error_; }

  void start(std::vector<std::uint16_t> ports) {
    ports_ = std::move(ports);
    thread_ = std::thread([this] { loop(); });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) {
      tpacket_stats stats{};
      socklen_t len = sizeof stats;
      if (::getsockopt(fd_, SOL_PACKET, PACKET_STATISTICS, &stats, &len) == 0) drops_ += stats.tp_drops;
    }
  }
  // Packets the kernel dropped before we read them.
  unsigned drops() const { return drops_; }
  // TCP payload per (src port, dst port), in order.
  const std::map<std::pair<std::uint16_t, std::uint16_t>, std::string>& flows() const { return flows_; }

 private:
  bool watched(std::uint16_t port) const { return std::find(ports_.begin(), ports_.end(), port) != ports_.end(); }

  void loop() {
    std::vector<std::uint8_t> packet(1024 * 1024);
    for (;;) {
      // Once stopped, what the socket still holds is read to the end (a slow
      // build, TSan's, lags behind the transfer), then the loop ends.
      const bool stopping = stop_;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, stopping ? 0 : 50) <= 0) {
        if (stopping) break;
        continue;
      }
      sockaddr_ll from{};
      socklen_t from_len = sizeof from;
      const ssize_t n =
          ::recvfrom(fd_, packet.data(), packet.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &from_len);
      // On lo every packet is seen going out and coming in: count it once.
      if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING) continue;
      std::size_t at = 14;  // lo's (all-zero) Ethernet header
      if (static_cast<std::size_t>(n) < at + 20) continue;
      const std::uint8_t* ip = packet.data() + at;
      if ((ip[0] >> 4) != 4 || ip[9] != IPPROTO_TCP) continue;
      const std::size_t ip_len = static_cast<std::size_t>(ip[0] & 0x0f) * 4;
      const std::size_t total = static_cast<std::size_t>(ip[2]) << 8 | ip[3];
      at += ip_len;
      if (static_cast<std::size_t>(n) < at + 20) continue;
      const std::uint8_t* tcp = packet.data() + at;
      const auto src = static_cast<std::uint16_t>(tcp[0] << 8 | tcp[1]);
      const auto dst = static_cast<std::uint16_t>(tcp[2] << 8 | tcp[3]);
      const std::size_t tcp_len = static_cast<std::size_t>(tcp[12] >> 4) * 4;
      if (!watched(src) && !watched(dst)) continue;
      // BIG TCP (packets over 64 KiB on lo) leaves the IP total length 0.
      const std::size_t end =
          total == 0 ? static_cast<std::size_t>(n) : std::min<std::size_t>(static_cast<std::size_t>(n), 14 + total);
      if (at + tcp_len >= end) continue;
      flows_[{src, dst}].append(reinterpret_cast<const char*>(tcp + tcp_len), end - at - tcp_len);
    }
  }

  int fd_ = -1;
  int error_ = 0;
  unsigned drops_ = 0;
  std::vector<std::uint16_t> ports_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::map<std::pair<std::uint16_t, std::uint16_t>, std::string> flows_;
};

}  // namespace

TEST_CASE("tls: neither a file's bytes nor its name cross loopback in clear during a transfer", "[e2e][tls]") {
  LoopbackCapture capture;
  if (!capture.available()) {
    if (capture.error() == EPERM || capture.error() == EACCES) {
      WARN("skipped: socket(AF_PACKET) needs CAP_NET_RAW (run the tests as root to capture loopback)");
      return;
    }
    FAIL("cannot capture on lo: " << std::strerror(capture.error()));
  }
  // Paced, so the capture keeps up (a packet socket's buffer is bounded).
  ClusterOptions options;
  options.peer_args = {"--upload-limit", "8M"};
  Cluster c(2, options);
  const std::string name = "quartz-zebra-7781-distinctive-name.bin";
  const std::uint64_t size = 4 * 1024 * 1024;
  const auto file = c.make_file(name, size, 4242);
  const std::uint16_t seed_port = split(c.peer(0).addr).second;
  capture.start({split(c.central_addr()).second, seed_port, split(c.peer(1).addr).second});
  const std::string id = c.register_file(0, file);
  const auto listed = c.on_central("list-files");
  CHECK(listed.out.find(name) != std::string::npos);  // the name did travel (inside TLS)
  const auto out = c.path("received.bin");
  REQUIRE(c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()}).exit_code == 0);
  REQUIRE(files_equal(file, out));
  capture.stop();

  std::uint64_t from_seed = 0;
  std::uint64_t total = 0;
  for (const auto& [ports, bytes] : capture.flows()) {
    total += bytes.size();
    if (ports.first == seed_port) from_seed += bytes.size();
  }
  INFO("captured " << total << " bytes on the cluster's ports, " << from_seed << " from the seed's port; "
                   << capture.drops() << " packets dropped");
  // The capture saw the transfer (else finding nothing would prove nothing).
  CHECK(from_seed >= size);
  const std::string bytes = read_file(file);
  for (const std::uint64_t offset : {std::uint64_t{0}, size / 2, size - 4096}) {
    const std::string slice = bytes.substr(offset, 4096);
    for (const auto& [ports, flow] : capture.flows()) {
      INFO("slice at " << offset << ", flow " << ports.first << " -> " << ports.second);
      CHECK(flow.find(slice) == std::string::npos);
    }
  }
  for (const auto& [ports, flow] : capture.flows()) {
    INFO("flow " << ports.first << " -> " << ports.second);
    CHECK(flow.find("quartz-zebra-7781") == std::string::npos);
    CHECK(flow.find(to_bytes(*file_id_from_hex(id))) == std::string::npos);  // nor its id
  }
}
