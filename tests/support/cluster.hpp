// A throwaway p2pshare deployment for end-to-end tests, header-only: one
// central server and N peer-servers on loopback (ports picked by the servers),
// each with its own data dir under one TempDir, plus shorthands to run client
// commands against them. Every wait is on a condition, never a bare sleep.
//
// Needs P2PSHARE_BINARY (the e2e target defines it). When a test fails (see
// e2e_failure_seen(), set by the e2e listener) or on an exception, the
// destructor prints every server's stdout/stderr to stderr, including those
// of processes a restart replaced, so that `ctest --output-on-failure` shows
// what the servers said.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "support/build_kind.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

namespace p2pshare::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline constexpr std::uint64_t kChunkSize = 262144;
inline constexpr std::uint64_t kMiB = 1024 * 1024;

// Set by a Catch listener (e2e/listener.cpp) when any assertion of the running
// test case fails; cleared when a test case starts.
inline bool& e2e_failure_seen() {
  static bool failed = false;
  return failed;
}

inline std::string binary() {
#ifdef P2PSHARE_BINARY
  return P2PSHARE_BINARY;
#else
  throw std::logic_error("P2PSHARE_BINARY is not defined for this target");
#endif
}

// A loopback address nobody listens on: bind port 0, note the port, close.
inline std::string unused_address() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind() failed");
  }
  ::close(fd);
  return "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
}

// Lines of a text, without their '\n'.
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) {
      lines.push_back(text.substr(pos));
      break;
    }
    lines.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return lines;
}

inline std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

inline bool contains_ci(const std::string& haystack, const std::string& needle) {
  return lower(haystack).find(lower(needle)) != std::string::npos;
}

inline std::uint64_t chunks_for(std::uint64_t size) {
  return (size + kChunkSize - 1) / kChunkSize;
}

// Seconds since `start`, for the figures timed tests report.
inline double elapsed_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Peak resident memory of a process (VmHWM), in KiB; 0 if unreadable.
inline std::uint64_t peak_rss_kib(int pid) {
  const std::string text = read_file("/proc/" + std::to_string(pid) + "/status");
  const auto at = text.find("VmHWM:");
  if (at == std::string::npos) return 0;
  return std::stoull(text.substr(at + 6));
}

// Parses a command's stdout as one JSON value; throws with the output on failure.
inline nlohmann::json parse_json(const RunResult& r) {
  try {
    return nlohmann::json::parse(r.out);
  } catch (const std::exception& e) {
    throw std::runtime_error("stdout is not one JSON value (" + std::string(e.what()) + "): exit " +
                             std::to_string(r.exit_code) + ", stdout [" + r.out + "], stderr [" + r.err + "]");
  }
}

// One server process and where it lives.
struct Node {
  std::string name;  // "central", "peer0", ...
  std::unique_ptr<Process> process;
  std::string addr;  // HOST:PORT it really listens on
  fs::path data_dir;
  fs::path download_dir;  // peers only
  bool running() const { return process && process->running(); }
};

struct ClusterOptions {
  unsigned heartbeat_ms = 200;
  unsigned holder_refresh_ms = 200;
  unsigned request_timeout_ms = 2000;
  // Wait in the constructor until every peer is live at the central server.
  bool wait_live = true;
  // More options for every peer-server.
  std::vector<std::string> peer_args;
  // More options for the central server.
  std::vector<std::string> central_args;
};

class Cluster {
 public:
  explicit Cluster(std::size_t peers = 0, ClusterOptions options = {}) : options_(options) {
    fs::create_directories(logs());
    fs::create_directories(files());
    start_central();
    for (std::size_t i = 0; i < peers; ++i) add_peer(false);
    if (options_.wait_live) {
      for (std::size_t i = 0; i < peers; ++i) {
        if (!wait_live(i))
          throw std::runtime_error("peer" + std::to_string(i) + " never became live: " + server_logs());
      }
    }
  }

  ~Cluster() {
    if (e2e_failure_seen() || std::uncaught_exceptions() > 0) std::cerr << server_logs() << std::flush;
    // Process's destructor SIGKILLs whatever still runs.
  }

  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  const fs::path& root() const { return dir_.path(); }
  fs::path logs() const { return root() / "logs"; }
  fs::path files() const { return root() / "files"; }
  fs::path path(const std::string& name) const { return root() / name; }

  Node& central() { return central_; }
  const std::string& central_addr() const { return central_.addr; }
  // What peer-servers started from now on get as --central-server-addr
  // (e.g. "A,B" for failover); empty (the default): central_addr().
  void set_peer_central_list(std::string list) { peer_central_list_ = std::move(list); }
  Node& peer(std::size_t i) { return *peers_.at(i); }
  std::size_t peer_count() const { return peers_.size(); }

  // --- servers -------------------------------------------------------------

  // (Re)starts the central server; by default on a free port and its own dir.
  Node& start_central(const std::string& addr = "127.0.0.1:0", std::optional<fs::path> data_dir = std::nullopt) {
    retire(central_);
    central_.name = "central";
    central_.data_dir = data_dir.value_or(central_.data_dir.empty() ? root() / "central" : central_.data_dir);
    std::vector<std::string> central_args{binary(),
                                          "central-server",
                                          "--addr",
                                          addr,
                                          "--data-dir",
                                          central_.data_dir.string(),
                                          "--heartbeat-interval",
                                          std::to_string(options_.heartbeat_ms)};
    central_args.insert(central_args.end(), options_.central_args.begin(), options_.central_args.end());
    central_.process = std::make_unique<Process>(central_args, logs());
    central_.addr = central_.process->wait_listening();
    return central_;
  }

  // A new peer-server with its own data and download dirs, started with
  // `flags` added; its index is peer_count() - 1.
  Node& add_peer(bool wait = true, const std::vector<std::string>& flags = {}) {
    auto node = std::make_unique<Node>();
    const std::size_t index = peers_.size();
    node->name = "peer" + std::to_string(index);
    node->data_dir = root() / node->name / "data";
    node->download_dir = root() / node->name / "downloads";
    peers_.push_back(std::move(node));
    start_peer(index, "127.0.0.1:0", flags);
    if (wait && options_.wait_live && !wait_live(index)) {
      throw std::runtime_error(peer(index).name + " never became live: " + server_logs());
    }
    return peer(index);
  }

  // (Re)starts peer i on its data dir with `flags` added (--upload-limit,
  // --download-limit, ...); by default on a new free port. The process it
  // replaces is kept for the failure dump (server_logs).
  Node& start_peer(std::size_t i, const std::string& addr = "127.0.0.1:0", const std::vector<std::string>& flags = {}) {
    Node& node = peer(i);
    retire(node);
    std::vector<std::string> args{binary(),
                                  "peer-server",
                                  "--central-server-addr",
                                  peer_central_list_.empty() ? central_.addr : peer_central_list_,
                                  "--addr",
                                  addr,
                                  "--data-dir",
                                  node.data_dir.string(),
                                  "--download-dir",
                                  node.download_dir.string(),
                                  "--holder-refresh",
                                  std::to_string(options_.holder_refresh_ms),
                                  "--request-timeout",
                                  std::to_string(options_.request_timeout_ms)};
    args.insert(args.end(), options_.peer_args.begin(), options_.peer_args.end());
    args.insert(args.end(), flags.begin(), flags.end());
    node.process = std::make_unique<Process>(args, logs());
    node.addr = node.process->wait_listening();
    return node;
  }

  // start_peer with `flags`, then waits until peer i is live (throws if it never is).
  Node& start_peer_with(std::size_t i, const std::vector<std::string>& flags, const std::string& addr = "127.0.0.1:0") {
    Node& node = start_peer(i, addr, flags);
    if (!wait_live(i)) throw std::runtime_error(node.name + " never became live: " + server_logs());
    return node;
  }

  // A new peer-server, peer(peer_count() - 1), that seeds `file` at
  // --upload-limit `upload_limit` (e.g. "2M"), so that downloads from it last
  // long enough to act while they run; the file id.
  std::string add_seed(const fs::path& file, const std::string& upload_limit) {
    add_peer(true, {"--upload-limit", upload_limit});
    return register_file(peer_count() - 1, file);
  }

  // Sends `sig` and waits for the exit; the exit code (-1: died of a signal),
  // nullopt if it did not exit within `timeout`.
  static std::optional<int> stop(Node& node, int sig = SIGTERM, std::chrono::milliseconds timeout = 10s) {
    if (!node.process) return std::nullopt;
    node.process->signal(sig);
    return node.process->wait(timeout);
  }
  static void kill(Node& node) { stop(node, SIGKILL); }

  // --- clients -------------------------------------------------------------

  // `p2pshare ARGS...`
  RunResult run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s) const {
    std::vector<std::string> full{binary()};
    full.insert(full.end(), args.begin(), args.end());
    return p2pshare::test::run(full, logs(), timeout);
  }

  // A control command on peer i, as its owner: adds --peer-addr and --data-dir.
  RunResult on_peer(std::size_t i, const std::string& command, std::vector<std::string> args = {},
                    std::chrono::milliseconds timeout = 60s) {
    return on_peer_as(i, peer(i).data_dir, command, std::move(args), timeout);
  }
  // The same, proving ownership with the cookie in `data_dir` (maybe not peer i's).
  RunResult on_peer_as(std::size_t i, const fs::path& data_dir, const std::string& command,
                       std::vector<std::string> args = {}, std::chrono::milliseconds timeout = 60s) {
    std::vector<std::string> full{command, "--peer-addr", peer(i).addr, "--data-dir", data_dir.string()};
    full.insert(full.end(), args.begin(), args.end());
    return run(full, timeout);
  }

  // A command to the central server: adds --central-server-addr.
  RunResult on_central(const std::string& command, std::vector<std::string> args = {}) const {
    std::vector<std::string> full{command, "--central-server-addr", central_.addr};
    full.insert(full.end(), args.begin(), args.end());
    return run(full);
  }

  // request-file on peer i as a background process (--json added, then `more`).
  std::unique_ptr<Process> request_in_background(std::size_t i, const std::string& id, const fs::path& out,
                                                 const std::vector<std::string>& more = {}) {
    std::vector<std::string> args{
        binary(), "request-file", "--peer-addr", peer(i).addr, "--data-dir", peer(i).data_dir.string(), "--file-id",
        id,       "--out",        out.string(),  "--json"};
    args.insert(args.end(), more.begin(), more.end());
    return std::make_unique<Process>(args, logs());
  }

  // register-file on peer i; the file id, or throws with the command's output.
  std::string register_file(std::size_t i, const fs::path& file) {
    const auto r = on_peer(i, "register-file", {"--path", file.string()});
    if (r.exit_code != 0 || r.out.size() != 65) {
      throw std::runtime_error("register-file " + file.string() + " on " + peer(i).name + " failed: exit " +
                               std::to_string(r.exit_code) + ", stdout [" + r.out + "], stderr [" + r.err + "]");
    }
    return r.out.substr(0, 64);
  }

  // A random file of `size` bytes under files()/subdir/name.
  fs::path make_file(const std::string& name, std::uint64_t size, std::uint64_t seed = 1,
                     const std::string& subdir = "") {
    const fs::path dir = subdir.empty() ? files() : files() / subdir;
    fs::create_directories(dir);
    write_random_file(dir / name, size, seed);
    return dir / name;
  }

  // list-files --json, or an empty array when the command fails.
  nlohmann::json list_files() const {
    const auto r = on_central("list-files", {"--json"});
    if (r.exit_code != 0) return nlohmann::json::array();
    return nlohmann::json::parse(r.out, nullptr, false);
  }
  // The list-files entry for `file_id`, or null.
  nlohmann::json file_entry(const std::string& file_id) const {
    for (const auto& f : list_files()) {
      if (f.value("file_id", "") == file_id) return f;
    }
    return nullptr;
  }
  // Live holders of `file_id` per list-files; -1 when the file is not listed.
  int holders(const std::string& file_id) const {
    const auto f = file_entry(file_id);
    return f.is_object() ? f.value("holders", -1) : -1;
  }

  // Addresses of live peers (holding `file_id` if given), per list-peers; nullopt if the command failed.
  std::optional<std::vector<std::string>> live_addrs(const std::string& file_id = "") const {
    std::vector<std::string> args{"--json"};
    if (!file_id.empty()) args.insert(args.end(), {"--file-id", file_id});
    const auto r = on_central("list-peers", args);
    if (r.exit_code != 0) return std::nullopt;
    const auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (!j.is_array()) return std::nullopt;
    std::vector<std::string> addrs;
    for (const auto& p : j) addrs.push_back(p.value("addr", ""));
    std::sort(addrs.begin(), addrs.end());
    return addrs;
  }
  bool is_live(std::size_t i, const std::string& file_id = "") const {
    const auto addrs = live_addrs(file_id);
    return addrs && std::find(addrs->begin(), addrs->end(), peers_.at(i)->addr) != addrs->end();
  }
  bool wait_live(std::size_t i, std::chrono::milliseconds timeout = 10s) const {
    return wait_for([&] { return is_live(i); }, timeout);
  }
  bool wait_holders(const std::string& file_id, int n, std::chrono::milliseconds timeout = 10s) const {
    return wait_for([&] { return holders(file_id) == n; }, timeout);
  }

  // Peer i's `status --json`, or null when the command fails or prints no object.
  nlohmann::json status_json(std::size_t i) {
    const auto r = on_peer(i, "status", {"--json"}, 10s);
    if (r.exit_code != 0) return nullptr;
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    return j.is_object() ? j : nullptr;
  }
  // The status entry of the download of `id` on peer i, or null.
  nlohmann::json download_entry(std::size_t i, const std::string& id) {
    const auto j = status_json(i);
    if (!j.is_object() || !j.contains("downloads")) return nullptr;
    for (const auto& d : j["downloads"]) {
      if (d.value("file_id", "") == id) return d;
    }
    return nullptr;
  }
  // have_bytes of that download; 0 if there is none.
  std::uint64_t have_bytes(std::size_t i, const std::string& id) {
    const auto d = download_entry(i, id);
    return d.is_object() ? d.value("have_bytes", std::uint64_t{0}) : 0;
  }
  // shared[].uploaded of `id` in peer i's status; nullopt if not shared there.
  std::optional<std::uint64_t> uploaded(std::size_t i, const std::string& id) {
    const auto j = status_json(i);
    if (!j.is_object()) return std::nullopt;
    for (const auto& s : j.value("shared", nlohmann::json::array())) {
      if (s.value("file_id", "") == id) return s.value("uploaded", std::uint64_t{0});
    }
    return std::nullopt;
  }

  // Everything every server (current and retired) printed.
  std::string server_logs() const {
    std::string text;
    auto add = [&](const std::string& name, const Process& p) {
      text += "----- " + name + " stdout -----\n" + p.out() + "----- " + name + " stderr -----\n" + p.err();
    };
    for (const auto& [name, p] : retired_) add(name + " (earlier run)", *p);
    if (central_.process) add(central_.name, *central_.process);
    for (const auto& node : peers_) {
      if (node->process) add(node->name, *node->process);
    }
    return text;
  }

 private:
  // Keeps an earlier run's process (killed if still running) for the logs.
  void retire(Node& node) {
    if (!node.process) return;
    if (node.process->running()) {
      node.process->signal(SIGKILL);
      node.process->wait();
    }
    retired_.emplace_back(node.name, std::move(node.process));
  }

  ClusterOptions options_;
  std::string peer_central_list_;
  TempDir dir_;
  Node central_;
  std::vector<std::unique_ptr<Node>> peers_;
  std::vector<std::pair<std::string, std::unique_ptr<Process>>> retired_;
};

}  // namespace p2pshare::test
