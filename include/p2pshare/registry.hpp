// The central server's registry: peers, files, and who holds what, kept in
// a store (db.hpp: SQLite, or PostgreSQL) and mirrored in memory so no
// request scans the database.
//
// Threading: not thread-safe; the central server calls it from its one
// network thread.
//
// Group commit: a mutating call (upsert_peer, announce, withdraw) changes
// memory and writes its rows into one open store transaction before it
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
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::db {
class Database;
struct Location;
}  // namespace p2pshare::db

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
  std::uint32_t replicas = 0;  // the replica target (set_replicas); 0 = none
};

// What replica planning needs of one file (replicas.hpp).
struct ReplicaFacts {
  std::uint64_t size = 0;
  std::vector<PeerId> live_complete;  // live complete holders
};

// What one peer and one address may hold, and when the registry forgets.
// The defaults fit a first-wave user sharing a large folder (10,000 files,
// 1 TiB in 256 KiB chunks) while keeping one peer's share of memory to a
// few hundred MiB at most.
struct Limits {
  // Files one peer may hold at once (complete or partial).
  std::size_t max_files_per_peer = 10000;
  // Chunks, summed over the files one peer holds: the registry keeps 32
  // bytes of hash per chunk, so this bounds what one peer's manifests cost.
  std::uint64_t max_chunks_per_peer = std::uint64_t{4} * 1024 * 1024;
  // New peer identities one address may register: a token bucket of this
  // many a minute, full (so a burst of this many) when the address is new.
  // Re-registering an identity the registry knows costs nothing, so peers
  // reconnecting after a restart are never refused. 0 = no limit.
  std::uint32_t new_peers_per_minute = 60;
  // A peer not seen for this long is forgotten with its holdings; a file
  // nobody holds any more is forgotten at the next forget_stale().
  std::chrono::milliseconds forget_after = std::chrono::hours(24 * 7);
};

// What one forget_stale() call removed.
struct Forgotten {
  std::size_t peers = 0;
  std::size_t files = 0;
  bool more = false;  // more is due: call again (after serving what waits)
};

class Registry {
 public:
  // Opens or creates <data_dir>/registry.db. `expiry`: a peer not seen for
  // this long is not live (not listed, not counted as a holder).
  Registry(const std::filesystem::path& data_dir, std::chrono::milliseconds expiry, Limits limits = {});
  // The same on any store (db.hpp): SQLite or PostgreSQL.
  Registry(const db::Location& location, std::chrono::milliseconds expiry, Limits limits = {});
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Creates or updates the peer (address, last_seen = now). A new identity
  // takes a token from the bucket of `source` (the address it came from,
  // or a whole IPv6 /64; empty: `host`); with none left it throws
  // Error(Errc::unavailable) and changes nothing.
  void upsert_peer(const PeerId& id, const std::string& host, std::uint16_t port, SystemClock::time_point now,
                   std::string_view source = {});
  // Heartbeat: last_seen = now (in memory until flush_last_seen). False if unknown.
  bool touch_peer(const PeerId& id, SystemClock::time_point now);
  // The peer holds the file (partial == nullopt: complete). Stores the
  // manifest on first sight, adds the name to the file's names if new.
  // The manifest was already validated; its file id is computed here.
  // A file new to this peer that would take it past max_files_per_peer or
  // max_chunks_per_peer throws Error(Errc::unavailable) and changes nothing.
  FileId announce(const PeerId& peer, const Manifest& manifest, std::optional<Bitfield> partial);
  // The peer no longer holds the file. False if it did not.
  bool withdraw(const PeerId& peer, const FileId& file);

  // Replicas (replicas.hpp): the file's replica target, persisted with the
  // file (into the pending batch). False if the file is unknown.
  bool set_replicas(const FileId& file, std::uint32_t replicas);
  // Every file with a target above 0, for the planner at start.
  std::vector<std::pair<FileId, std::uint32_t>> replica_targets() const;
  std::optional<ReplicaFacts> replica_facts(const FileId& file, SystemClock::time_point now) const;
  bool peer_live(const PeerId& peer, SystemClock::time_point now) const;

  // Pages of files in file-id order, after `after` (exclusive), at most `limit`.
  std::vector<FileSummary> list_files(std::optional<FileId> after, std::size_t limit,
                                      SystemClock::time_point now) const;
  std::size_t file_count() const noexcept;
  // One file's summary, as list_files gives it.
  std::optional<FileSummary> summary(const FileId& id, SystemClock::time_point now) const;
  // Live peers; with `file`, only the live holders of that file.
  std::vector<PeerRecord> live_peers(std::optional<FileId> file, SystemClock::time_point now) const;
  std::optional<FileDetails> file(const FileId& id, SystemClock::time_point now) const;

  // Forgets peers not seen for limits.forget_after (with their holdings)
  // and files nobody holds, deleting at most `max_rows` rows (a peer with
  // more holdings loses them over several calls), into the pending batch: commit()
  // afterwards. Bounded so that a backlog never stalls the requests that
  // wait; `more` says to call again. Also drops rate-limit state that has
  // refilled (a full bucket and none are the same).
  Forgotten forget_stale(SystemClock::time_point now, std::size_t max_rows);
  std::size_t peer_count() const noexcept;

  // Several central servers on one PostgreSQL database are one registry.
  // Every committed batch also appends what it changed (peer, holder, file
  // keys) to a change log, in the same transaction; sync() reads the log
  // past the last position it applied and reloads the rows other central
  // servers changed into memory. The server calls it every ~100 ms and
  // before answering a read that misses in memory. Call it with no batch
  // open (it does nothing then). Throws Error(unavailable/io) if the store
  // cannot be read; the next call resumes where this one stopped. Returns
  // the number of others' changes applied. On SQLite (one central server
  // per file) shared() is false and sync() does nothing.
  bool shared() const noexcept;
  std::size_t sync();

  // The accounts store (account_store.hpp) keeps its tables in this
  // database: `statements` runs in the open batch, under the rules above
  // (committed by commit(); if it throws, the batch is rolled back).
  db::Database& database();
  void write(const std::function<void()>& statements);

  // Writes the heartbeats kept in memory, then commits.
  void flush_last_seen();
  // True while writes since the last commit are pending.
  bool has_uncommitted() const noexcept;
  // How many batches were rolled back so far (a failed write or commit).
  // Whoever held an answer for a batch compares this before sending it: a
  // batch rolled back by another request's failed write took the first
  // request's writes with it, though commit() has nothing left to fail.
  std::uint64_t abandoned_batches() const noexcept;
  // Makes the pending writes durable (see above); throws Error(Errc::io) if
  // it cannot, after rolling back memory and store to the last commit.
  void commit();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace p2pshare::central
