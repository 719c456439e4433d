// The peer-server daemon: serves the chunks of the files its owner
// registered, downloads files from every peer that has them, and answers its
// owner's control commands (proved by the cookie in --data-dir).
//
// Threading: one network thread runs the io_context (every connection, the
// schedulers, SQLite state); a small disk pool preads, hashes, pwrites and
// fsyncs. stop() may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <asio.hpp>

#include "p2pshare/cli.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/tls.hpp"

namespace p2pshare::peer {

struct PeerConfig {
  cli::Address listen;
  // --central-server-addr: one or more, used one at a time in this order
  // (the next when the one in use stops answering).
  std::vector<cli::Address> centrals;
  std::filesystem::path data_dir;
  std::filesystem::path download_dir;
  std::uint64_t upload_limit = 0;    // bytes/s, 0 = unlimited
  std::uint64_t download_limit = 0;  // bytes/s, 0 = unlimited
  unsigned disk_threads = 0;         // 0 = one per core
  std::size_t max_connections = 4096;
  sched::Config sched;
  std::chrono::milliseconds holder_refresh{2000};
  // --central-fingerprint: the central server's key, pinned (nothing is
  // recorded in known_centrals then).
  std::optional<tls::KeyHash> central_fingerprint;
  // --share-dir: folders whose files are all shared, and kept so (absolute, canonical).
  std::vector<std::filesystem::path> share_dirs;
  // --http-addr: the dashboard, /metrics, the JSON API and the gateway (plain HTTP).
  std::optional<cli::Address> http;
};

class PeerServer {
 public:
  PeerServer(asio::io_context& io, PeerConfig config);
  ~PeerServer();
  // Loads the state, binds, starts accepting and resumes unfinished
  // downloads. Returns the address actually bound.
  cli::Address start();
  // Closes the listener and every connection, saves resume state (clean).
  void stop();
  // The HTTP side's bound address, once start() returned (nullopt: no --http-addr).
  std::optional<cli::Address> http_address() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Where the control cookie lives for a data dir.
std::filesystem::path cookie_path(const std::filesystem::path& data_dir);
// The cookie's 64 lowercase hex digits from the bytes of a cookie file: 64
// hex digits (either case) with or without a newline, or the 32 raw bytes
// written before; nullopt for anything else.
std::optional<std::string> cookie_hex_of(std::string_view file_bytes);
inline constexpr std::size_t kCookieFileMax = 66;  // the longest a cookie file can be: 64 digits, CR LF

}  // namespace p2pshare::peer
