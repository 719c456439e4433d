// The central server: a tracker-like registry of live peers and the files
// they hold, over the central plane (proto/central.proto).
//
// Threading: everything runs on the one io_context thread that calls run();
// the Registry is touched only there. stop() may be called from any thread.
// Forgetting stale peers and files runs there too, every heartbeat interval,
// in bounded batches with the waiting requests served between them.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <asio.hpp>

#include "p2pshare/cli.hpp"
#include "p2pshare/registry.hpp"

namespace p2pshare::central {

struct ServerConfig {
  cli::Address listen;
  std::filesystem::path data_dir;
  // Where the registry is kept: "sqlite" (registry.db in data_dir) or a
  // postgresql:// URL (store.hpp). The key pair stays in data_dir either way.
  std::string store = "sqlite";
  // Peers heartbeat this often; one silent for 3 periods is no longer live.
  std::chrono::milliseconds heartbeat_interval{10000};
  std::size_t max_connections = 4096;
  // What one peer and one address may hold, and when stale entries go.
  Limits limits;
  // --http-addr: the dashboard, /metrics and the read-only JSON API (plain HTTP).
  std::optional<cli::Address> http;
  // Accounts: how long a capability is valid (the bound on how late a
  // leave or a rejection takes effect at the holders), the Argon2id cost,
  // and the password hashes that may run at once (each holds memlimit
  // bytes) on their own threads; more waiting than max_queued_hashes are
  // refused as busy.
  std::chrono::milliseconds capability_lifetime{std::chrono::minutes(5)};
  unsigned long long password_opslimit = 2;               // crypto_pwhash_OPSLIMIT_INTERACTIVE
  std::size_t password_memlimit = std::size_t{64} << 20;  // crypto_pwhash_MEMLIMIT_INTERACTIVE
  unsigned hash_threads = 2;
  std::size_t max_queued_hashes = 32;
};

class CentralServer {
 public:
  CentralServer(asio::io_context& io, ServerConfig config);
  ~CentralServer();
  // Binds and starts accepting; returns the address actually bound.
  cli::Address start();
  // SHA-256 of its public key's DER SubjectPublicKeyInfo, 64 lowercase hex
  // digits (its key pair lives in data_dir: identity.key, identity.crt).
  std::string fingerprint() const;
  // Closes the listener and every connection, flushes the registry.
  void stop();
  // The HTTP side's bound address, once start() returned (nullopt: no --http-addr).
  std::optional<cli::Address> http_address() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace p2pshare::central
