// The central server's registry: peers, files, and who holds what, kept in
// SQLite (WAL) and mirrored in memory so no request scans the database.
//
// Threading: not thread-safe; the central server calls it from its one
// network thread.
//
// Group commit: a mutating call (upsert_peer, announce, withdraw) changes
// memory and writes its rows into one open SQLite transaction before it
// returns; commit() ends that transaction. The server runs every request that
// is ready, commits once, and only then answers them, so one commit (and the
// occasional checkpoint) is shared by a whole batch and nothing is
// acknowledged before it is stored. If a write or the commit fails, the batch
// is rolled back, memory is reloaded from the store (both views agree again)
// and the call throws. last_seen is the exception: heartbeats update memory
// only, and flush_last_seen() writes them (periodically and on shutdown).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/types.hpp"

struct sqlite3;

namespace p2pshare::central {

using SystemClock = std::chrono::system_clock;

struct PeerRecord {
  PeerId id;
  std::string host;
  std::uint16_t port = 0;
  SystemClock::time_point last_seen;
};

struct HolderRecord {
  PeerRecord peer;
  std::optional<Bitfield> partial;  // nullopt = complete holder
};

struct FileSummary {
  FileId id;
  std::string name;  // the first name it was announced under
  std::uint64_t size = 0;
  std::uint32_t live_holders = 0;
};

struct FileDetails {
  Manifest manifest;  // manifest.name = first name
  std::vector<std::string> names;
  std::vector<HolderRecord> live_holders;
};

class Registry {
 public:
  // Opens or creates <data_dir>/registry.db. `expiry`: a peer not seen for
  // this long is not live (not listed, not counted as a holder).
  Registry(const std::filesystem::path& data_dir, std::chrono::milliseconds expiry);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Creates or updates the peer (address, last_seen = now).
  void upsert_peer(const PeerId& id, const std::string& host, std::uint16_t port, SystemClock::time_point now);
  // Heartbeat: last_seen = now (in memory until flush_last_seen). False if unknown.
  bool touch_peer(const PeerId& id, SystemClock::time_point now);
  // The peer holds the file (partial == nullopt: complete). Stores the
  // manifest on first sight, adds the name to the file's names if new.
  // The manifest was already validated; its file id is computed here.
  FileId announce(const PeerId& peer, const Manifest& manifest, std::optional<Bitfield> partial);
  // The peer no longer holds the file. False if it did not.
  bool withdraw(const PeerId& peer, const FileId& file);

  // Pages of files in file-id order, after `after` (exclusive), at most `limit`.
  std::vector<FileSummary> list_files(std::optional<FileId> after, std::size_t limit,
                                      SystemClock::time_point now) const;
  std::size_t file_count() const noexcept;
  // Live peers; with `file`, only the live holders of that file.
  std::vector<PeerRecord> live_peers(std::optional<FileId> file, SystemClock::time_point now) const;
  std::optional<FileDetails> file(const FileId& id, SystemClock::time_point now) const;

  // Writes the heartbeats kept in memory, then commits.
  void flush_last_seen();
  // True while writes since the last commit are pending.
  bool has_uncommitted() const noexcept;
  // Makes the pending writes durable (see above); throws Error(Errc::io) if
  // it cannot, after rolling back memory and store to the last commit.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace p2pshare::central
