#include "p2pshare/registry.hpp"

#include <algorithm>
#include <array>
#include <limits>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"

// Durability: the database runs in WAL mode with synchronous=NORMAL. Writes
// go into one open transaction (group commit) that commit() ends; a committed
// transaction is in the WAL file (handed to the OS) before commit() returns,
// so a crash of the process itself (SIGKILL, abort) loses nothing that was
// acknowledged after a commit; the next open replays the WAL. Only a power
// loss or OS crash can roll back the last transactions since the WAL was last
// synced, and even then the database stays consistent. For a tracker that is
// the right trade: peers re-announce, and a commit costs no fsync.

namespace p2pshare::central {
namespace {

constexpr std::int64_t kSchemaVersion = 4;
// Names are metadata anyone can add to; the cap keeps a popular file's row
// (and every FileDetails reply) bounded.
constexpr std::size_t kMaxNamesPerFile = 16;
// The change log keeps this much history; a central server that has not
// read it for half of that reloads everything instead (it may have missed
// trimmed rows).
constexpr std::int64_t kChangeLogKeepMs = std::int64_t{10} * 60 * 1000;
// Serializes appending to the change log and the commit after it, so that
// sequence numbers become visible in order: a reader that saw seq N has seen
// every change below N.
constexpr std::int64_t kChangeLogLock = 0x70327073686c67;
constexpr std::int64_t kChangesPerRead = 1000;
// Rows of one INSERT into the change log (5 parameters each; PostgreSQL
// takes at most 65,535).
constexpr std::size_t kChangesPerInsert = 100;

// kMigrations[v] brings a store at schema version v to version v + 1, in
// each dialect (db::open): the same numbered steps on SQLite and on
// PostgreSQL, written twice where the dialects differ (BLOB/BYTEA, WITHOUT
// ROWID, INTEGER PRIMARY KEY/identity columns). Append a step for every
// schema change, to both; never edit a released one.
constexpr std::array<db::Migration, kSchemaVersion> kMigrations = {{
    {R"sql(
CREATE TABLE peers (
  id BLOB PRIMARY KEY NOT NULL,   -- PeerId, 16 bytes
  host TEXT NOT NULL,
  port INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL   -- Unix milliseconds
) WITHOUT ROWID;
-- A rowid table: chunk_hashes is up to 2 MiB, too large for WITHOUT ROWID.
CREATE TABLE files (
  id BLOB PRIMARY KEY NOT NULL,   -- FileId, 32 bytes
  size INTEGER NOT NULL,
  chunk_size INTEGER NOT NULL,
  chunk_hashes BLOB NOT NULL      -- 32 bytes per chunk, in chunk order
);
CREATE TABLE file_names (
  file_id BLOB NOT NULL REFERENCES files (id),
  position INTEGER NOT NULL,      -- 0 is the first name, the one listed
  name TEXT NOT NULL,
  PRIMARY KEY (file_id, position),
  UNIQUE (file_id, name)
) WITHOUT ROWID;
CREATE TABLE holders (
  peer_id BLOB NOT NULL REFERENCES peers (id),
  file_id BLOB NOT NULL REFERENCES files (id),
  partial BLOB,                   -- bitfield wire form; NULL: a complete holder
  PRIMARY KEY (peer_id, file_id)
) WITHOUT ROWID;
-- Lets deleting a file check its foreign keys without scanning all holders.
CREATE INDEX holders_by_file ON holders (file_id);
)sql",
     R"sql(
CREATE TABLE peers (
  id BYTEA PRIMARY KEY,           -- PeerId, 16 bytes
  host TEXT NOT NULL,
  port BIGINT NOT NULL,
  last_seen_ms BIGINT NOT NULL    -- Unix milliseconds
);
CREATE TABLE files (
  id BYTEA PRIMARY KEY,           -- FileId, 32 bytes
  size BIGINT NOT NULL,
  chunk_size BIGINT NOT NULL,
  chunk_hashes BYTEA NOT NULL     -- 32 bytes per chunk, in chunk order
);
CREATE TABLE file_names (
  file_id BYTEA NOT NULL REFERENCES files (id),
  position BIGINT NOT NULL,       -- 0 is the first name, the one listed
  name TEXT NOT NULL,
  PRIMARY KEY (file_id, position),
  UNIQUE (file_id, name)
);
CREATE TABLE holders (
  peer_id BYTEA NOT NULL REFERENCES peers (id),
  file_id BYTEA NOT NULL REFERENCES files (id),
  partial BYTEA,                  -- bitfield wire form; NULL: a complete holder
  PRIMARY KEY (peer_id, file_id)
);
CREATE INDEX holders_by_file ON holders (file_id);
)sql"},
    // 2: accounts, groups and private files (account_store.hpp).
    {R"sql(
CREATE TABLE users (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,      -- checked by accounts::name_error
  password_hash TEXT NOT NULL,    -- Argon2id, libsodium's encoded form
  created_ms INTEGER NOT NULL
);
CREATE TABLE sessions (
  token_hash BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the 32-byte token
  user_id INTEGER NOT NULL REFERENCES users (id),
  created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE user_groups (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  owner_id INTEGER NOT NULL REFERENCES users (id),
  created_ms INTEGER NOT NULL
);
CREATE TABLE members (
  group_id INTEGER NOT NULL REFERENCES user_groups (id),
  user_id INTEGER NOT NULL REFERENCES users (id),
  joined_ms INTEGER NOT NULL,
  PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id);
CREATE TABLE join_requests (
  group_id INTEGER NOT NULL REFERENCES user_groups (id),
  user_id INTEGER NOT NULL REFERENCES users (id),
  requested_ms INTEGER NOT NULL,
  PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
-- A file registered into a group. A file id in here is listed publicly only
-- if it is also in public_files (someone registered the same bytes publicly).
CREATE TABLE file_groups (
  file_id BLOB NOT NULL,
  group_id INTEGER NOT NULL REFERENCES user_groups (id),
  PRIMARY KEY (file_id, group_id)
) WITHOUT ROWID;
CREATE INDEX file_groups_by_group ON file_groups (group_id);
CREATE TABLE public_files (file_id BLOB PRIMARY KEY NOT NULL) WITHOUT ROWID;
)sql",
     R"sql(
CREATE TABLE users (
  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL,
  created_ms BIGINT NOT NULL
);
CREATE TABLE sessions (
  token_hash BYTEA PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES users (id),
  created_ms BIGINT NOT NULL
);
CREATE TABLE user_groups (
  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  owner_id BIGINT NOT NULL REFERENCES users (id),
  created_ms BIGINT NOT NULL
);
CREATE TABLE members (
  group_id BIGINT NOT NULL REFERENCES user_groups (id),
  user_id BIGINT NOT NULL REFERENCES users (id),
  joined_ms BIGINT NOT NULL,
  PRIMARY KEY (group_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id);
CREATE TABLE join_requests (
  group_id BIGINT NOT NULL REFERENCES user_groups (id),
  user_id BIGINT NOT NULL REFERENCES users (id),
  requested_ms BIGINT NOT NULL,
  PRIMARY KEY (group_id, user_id)
);
CREATE TABLE file_groups (
  file_id BYTEA NOT NULL,
  group_id BIGINT NOT NULL REFERENCES user_groups (id),
  PRIMARY KEY (file_id, group_id)
);
CREATE INDEX file_groups_by_group ON file_groups (group_id);
CREATE TABLE public_files (file_id BYTEA PRIMARY KEY);
)sql"},
    // 3: the change log several central servers on one database read each
    // other's writes from (Registry::sync). Written on PostgreSQL only; the
    // table exists on SQLite too so the steps stay the same.
    {R"sql(
CREATE TABLE changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  origin INTEGER NOT NULL,        -- the writing central's random instance id
  kind INTEGER NOT NULL,          -- 1 peer, 2 holder, 3 file
  peer_id BLOB,
  file_id BLOB,
  at_ms INTEGER NOT NULL          -- Unix milliseconds, for trimming
);
)sql",
     R"sql(
CREATE TABLE changes (
  seq BIGSERIAL PRIMARY KEY,
  origin BIGINT NOT NULL,
  kind SMALLINT NOT NULL,
  peer_id BYTEA,
  file_id BYTEA,
  at_ms BIGINT NOT NULL
);
CREATE INDEX changes_by_time ON changes (at_ms);
)sql"},
    // 4: replica targets (register-file --replicas; replicas.hpp).
    {R"sql(
ALTER TABLE files ADD COLUMN replicas INTEGER NOT NULL DEFAULT 0;
)sql",
     R"sql(
ALTER TABLE files ADD COLUMN replicas INTEGER NOT NULL DEFAULT 0;
)sql"},
}};

std::int64_t to_unix_ms(SystemClock::time_point time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

SystemClock::time_point from_unix_ms(std::int64_t ms) {
  return SystemClock::time_point(std::chrono::milliseconds(ms));
}

std::string_view as_chars(std::span<const std::uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

std::string join_hashes(const std::vector<Sha256Digest>& hashes) {
  std::string joined;
  joined.reserve(hashes.size() * Sha256Digest::kSize);
  for (const auto& hash : hashes) joined.append(as_chars(hash.bytes));
  return joined;
}

[[noreturn]] void corrupt(const std::string& where, std::string_view detail) {
  throw Error(Errc::io,
              fmt::format("{} is corrupt: {}; restore it from a backup or move it away to start empty", where, detail));
}

}  // namespace

struct Registry::Impl {
  struct Peer {
    PeerId id;
    std::string host;
    std::uint16_t port = 0;
    std::int64_t last_seen_ms = 0;
    bool last_seen_dirty = false;  // memory is newer than the row
    std::set<FileId> files;        // the files it holds
    std::uint64_t chunks = 0;      // their chunks, summed (Limits::max_chunks_per_peer)
  };
  struct Holding {
    // std::map nodes do not move, and a peer is erased only after its
    // holdings (forget_stale), so this pointer stays valid; it makes the
    // liveness check free of lookups.
    const Peer* peer = nullptr;
    std::optional<Bitfield> partial;
  };
  // A file's holders, sorted by peer id in one array. ListPeers and GetFile
  // walk every holder of a file; walking a std::map (a pointer chase per
  // node) took a fifth of the central server's CPU in goal 6's mixed load.
  // Adding or removing a holder moves the entries after it: O(holders), the
  // order of one GetFile of that file.
  class Holders {
   public:
    using Entry = std::pair<PeerId, Holding>;
    using iterator = std::vector<Entry>::iterator;
    using const_iterator = std::vector<Entry>::const_iterator;

    iterator begin() noexcept { return entries_.begin(); }
    iterator end() noexcept { return entries_.end(); }
    const_iterator begin() const noexcept { return entries_.begin(); }
    const_iterator end() const noexcept { return entries_.end(); }
    bool empty() const noexcept { return entries_.empty(); }
    std::size_t size() const noexcept { return entries_.size(); }

    iterator find(const PeerId& id) {
      const auto it = lower_bound(id);
      return it != entries_.end() && it->first == id ? it : entries_.end();
    }
    void insert_or_assign(const PeerId& id, Holding holding) {
      const auto it = lower_bound(id);
      if (it != entries_.end() && it->first == id) {
        it->second = std::move(holding);
      } else {
        entries_.emplace(it, id, std::move(holding));
      }
    }
    void erase(iterator it) { entries_.erase(it); }
    std::size_t erase(const PeerId& id) {
      const auto it = find(id);
      if (it == entries_.end()) return 0;
      entries_.erase(it);
      return 1;
    }
    // Loading: append in any order (ids unique: the table's primary key),
    // then sort once.
    void append(const PeerId& id, Holding holding) { entries_.emplace_back(id, std::move(holding)); }
    void sort() {
      std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) { return a.first < b.first; });
    }

   private:
    iterator lower_bound(const PeerId& id) {
      return std::lower_bound(entries_.begin(), entries_.end(), id,
                              [](const Entry& entry, const PeerId& key) { return entry.first < key; });
    }
    std::vector<Entry> entries_;
  };
  struct File {
    std::uint64_t size = 0;
    std::uint32_t chunk_size = 0;
    std::vector<Sha256Digest> chunk_hashes;
    std::vector<std::string> names;  // in order of first announcement
    Holders holders;
    std::uint32_t replicas = 0;  // the replica target
  };

  // A token bucket of new identities for one source address, in integers
  // so that a refill is exact: a token is worth kMinute credit, and each
  // millisecond adds new_peers_per_minute of it.
  struct Bucket {
    std::int64_t credit = 0;
    std::int64_t updated_ms = 0;
  };
  static constexpr std::int64_t kMinute = 60000;

  Impl(const db::Location& location, std::chrono::milliseconds expiry, Limits configured);
  void load();
  // Replaces memory with the store's contents; if the store cannot be read,
  // memory stays as it was, needs_reload is set and this throws.
  void reload();
  // Every method that changes the registry calls this first, before it
  // looks anything up: a reload replaces every Peer and File, so it must
  // never happen between a lookup and the use of what it found.
  void catch_up() {
    if (needs_reload) reload();
  }
  // Opens the batch transaction if none is open.
  void begin_writes();
  // Runs `write` (statements only) in the batch; if it throws, the batch is
  // rolled back and memory reloaded from the store, so both views agree.
  template <typename F>
  void write(F&& write);
  void abandon_batch() noexcept;

  bool live(const Peer& peer, std::int64_t now_ms) const { return now_ms - peer.last_seen_ms < expiry_ms; }
  void set_last_seen(Peer& peer, std::int64_t ms);
  std::uint32_t count_live_holders(const File& file, std::int64_t now_ms) const;
  // Throws Error(unavailable) if `source` may register no new identity now.
  void take_new_peer_token(const std::string& source, std::int64_t now_ms);
  void refill(Bucket& bucket, std::int64_t now_ms) const;
  std::size_t forget_peers(std::int64_t cutoff_ms, std::size_t max_rows, bool& more);
  // Deletes `count` of the peer's holdings (the peer stays, for a later step).
  void forget_holdings(Peer& peer, std::size_t count);
  std::size_t forget_orphans(std::size_t max_rows, bool& more);

  // --- several central servers on one PostgreSQL database (sync) ---------
  enum ChangeKind : std::int64_t { kPeerChanged = 1, kHolderChanged = 2, kFileChanged = 3 };
  struct Change {
    std::int64_t kind = 0;
    PeerId peer;
    FileId file;
    bool operator<(const Change& other) const {
      return std::tie(kind, peer, file) < std::tie(other.kind, other.peer, other.file);
    }
  };
  // Notes a change of this batch for the other centrals (shared stores only).
  void record(std::int64_t kind, const PeerId& peer, const FileId& file) {
    if (shared) pending_changes.insert(Change{kind, peer, file});
  }
  // Appends the batch's changes to the log, in the batch's transaction.
  void append_changes(std::int64_t now_ms);
  // Memory takes the store's current rows for one key.
  void apply_peer(const PeerId& id);
  void apply_holder(const PeerId& peer_id, const FileId& file_id);
  // False if the file has no row (any memory of it is dropped).
  bool apply_file(const FileId& id);
  void drop_peer(const PeerId& id);
  void drop_file(const FileId& id);
  void drop_holding(File& file, const FileId& file_id, const PeerId& peer_id);

  std::unique_ptr<db::Database> db;
  std::string path;    // what db is, for messages
  bool batch = false;  // a transaction holds the writes since the last commit
  std::int64_t expiry_ms;
  Limits limits;
  // Prepared once; each call only binds and runs.
  db::Statement upsert_peer;
  db::Statement update_last_seen;
  db::Statement insert_file;
  db::Statement insert_name;
  db::Statement upsert_holder;
  db::Statement delete_holder;
  db::Statement delete_peer;
  db::Statement delete_file_names;
  db::Statement delete_file;
  db::Statement update_replicas;

  std::map<PeerId, Peer> peers;
  // Every peer ordered by last_seen, so listing live peers visits only the
  // live ones, however many stale peers have piled up.
  std::set<std::pair<std::int64_t, PeerId>> peers_by_last_seen;
  std::vector<Peer*> dirty_peers;  // those with last_seen_dirty set
  std::map<FileId, File> files;    // in id order, for paging
  std::set<FileId> orphans;        // files nobody holds: forget_stale removes them
  // Keyed by source address; memory only (a restart refills every bucket).
  std::unordered_map<std::string, Bucket> new_peer_buckets;

  bool needs_reload = false;    // a failed batch could not reload memory yet
  std::uint64_t abandoned = 0;  // batches rolled back
  // Shared stores (PostgreSQL): other central servers write the same rows.
  bool shared = false;
  std::int64_t origin = 0;    // this instance's id in the change log
  std::int64_t last_seq = 0;  // the change log is applied up to here
  std::int64_t last_sync_ms = 0;
  std::set<Change> pending_changes;
  std::optional<db::Statement> append_change_full;  // kChangesPerInsert rows
  db::Statement read_changes;
  db::Statement select_peer;
  db::Statement select_holder;
  db::Statement select_file;
  db::Statement select_names;
  db::Statement trim_changes;
  db::Statement lock_log;
};

Registry::Impl::Impl(const db::Location& location, std::chrono::milliseconds expiry, Limits configured)
    : db(db::open(location, "registry", kMigrations)),
      path(db->describe()),
      expiry_ms(expiry.count()),
      limits(configured),
      upsert_peer(db->prepare("INSERT INTO peers (id, host, port, last_seen_ms) VALUES (?1, ?2, ?3, ?4) "
                              "ON CONFLICT (id) DO UPDATE SET host = excluded.host, port = excluded.port, "
                              "last_seen_ms = excluded.last_seen_ms",
                              "upsert peer")),
      update_last_seen(db->prepare("UPDATE peers SET last_seen_ms = ?2 WHERE id = ?1", "update last_seen")),
      insert_file(db->prepare("INSERT INTO files (id, size, chunk_size, chunk_hashes) VALUES (?1, ?2, ?3, ?4) "
                              "ON CONFLICT DO NOTHING",
                              "insert file")),
      insert_name(
          db->prepare("INSERT INTO file_names (file_id, position, name) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                      "insert file name")),
      upsert_holder(db->prepare("INSERT INTO holders (peer_id, file_id, partial) VALUES (?1, ?2, ?3) "
                                "ON CONFLICT (peer_id, file_id) DO UPDATE SET partial = excluded.partial",
                                "upsert holder")),
      delete_holder(db->prepare("DELETE FROM holders WHERE peer_id = ?1 AND file_id = ?2", "delete holder")),
      delete_peer(db->prepare("DELETE FROM peers WHERE id = ?1", "delete peer")),
      delete_file_names(db->prepare("DELETE FROM file_names WHERE file_id = ?1", "delete file names")),
      delete_file(db->prepare("DELETE FROM files WHERE id = ?1", "delete file")),
      update_replicas(db->prepare("UPDATE files SET replicas = ?2 WHERE id = ?1", "set replicas")) {
  shared = db->dialect() == db::Dialect::postgresql;
  if (shared) {
    std::array<std::uint8_t, 8> random{};
    random_bytes(random);
    for (const auto byte : random) origin = (origin << 8) | byte;
    origin &= std::numeric_limits<std::int64_t>::max();
    read_changes = db->prepare(
        "SELECT seq, origin, kind, peer_id, file_id FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2", "read changes");
    select_peer = db->prepare("SELECT host, port, last_seen_ms FROM peers WHERE id = ?1", "read a peer");
    select_holder = db->prepare("SELECT partial FROM holders WHERE peer_id = ?1 AND file_id = ?2", "read a holder");
    select_file =
        db->prepare("SELECT size, chunk_size, chunk_hashes, replicas FROM files WHERE id = ?1", "read a file");
    select_names =
        db->prepare("SELECT name FROM file_names WHERE file_id = ?1 ORDER BY position", "read a file's names");
    trim_changes = db->prepare("DELETE FROM changes WHERE at_ms < ?1", "trim the change log");
    lock_log = db->prepare(fmt::format("SELECT pg_advisory_xact_lock({})", kChangeLogLock), "lock the change log");
  }
  load();
}

void Registry::Impl::begin_writes() {
  if (batch) return;
  // After a failed batch whose reload failed too (the store was away),
  // nothing is written until memory agrees with the store again. The
  // reload itself is catch_up's, at the start of the public method: here
  // the caller may hold references into memory.
  if (needs_reload) throw db::Unavailable("registry: memory is not yet reloaded from the store; retry");
  db->begin();
  batch = true;
}

template <typename F>
void Registry::Impl::write(F&& write) {
  try {
    begin_writes();
    write();
  } catch (...) {
    abandon_batch();
    throw;
  }
}

void Registry::Impl::abandon_batch() noexcept {
  if (batch) {
    db->rollback();
    ++abandoned;
  }
  batch = false;
  pending_changes.clear();
  try {
    reload();
  } catch (const std::exception&) {
    // The store cannot even be read (PostgreSQL is away): memory stays as
    // it was, and the next change reloads first (catch_up), so nothing
    // is acknowledged that was not stored.
  }
}

void Registry::Impl::reload() {
  // std::map and std::set keep their nodes when moved: the Holding
  // pointers into the old peers stay valid if the old state comes back.
  auto old_peers = std::move(peers);
  auto old_by_last_seen = std::move(peers_by_last_seen);
  auto old_dirty = std::move(dirty_peers);
  auto old_files = std::move(files);
  auto old_orphans = std::move(orphans);
  peers.clear();
  peers_by_last_seen.clear();
  dirty_peers.clear();
  files.clear();
  orphans.clear();
  try {
    load();
  } catch (...) {
    peers = std::move(old_peers);
    peers_by_last_seen = std::move(old_by_last_seen);
    dirty_peers = std::move(old_dirty);
    files = std::move(old_files);
    orphans = std::move(old_orphans);
    needs_reload = true;
    throw;
  }
  needs_reload = false;
}

void Registry::Impl::load() {
  // One transaction: a consistent snapshot even if another process writes.
  db->begin();
  struct EndRead {
    db::Database& db;
    ~EndRead() { db.rollback(); }  // read only: nothing to keep
  } end_read{*db};
  if (db->dialect() == db::Dialect::postgresql) {
    db->exec("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", "starting a snapshot");
  }

  auto peer_rows = db->prepare("SELECT id, host, port, last_seen_ms FROM peers", "load peers");
  while (peer_rows.step()) {
    const auto id = peer_id_from_bytes(as_chars(peer_rows.column_blob(0)));
    if (!id) corrupt(path, "a peer id is not 16 bytes");
    Peer& peer = peers[*id];
    peer.id = *id;
    peer.host = peer_rows.column_text(1);
    peer.port = static_cast<std::uint16_t>(peer_rows.column_int(2));
    peer.last_seen_ms = peer_rows.column_int(3);
    peers_by_last_seen.emplace(peer.last_seen_ms, *id);
  }

  auto file_rows = db->prepare("SELECT id, size, chunk_size, chunk_hashes, replicas FROM files", "load files");
  while (file_rows.step()) {
    const auto id = file_id_from_bytes(as_chars(file_rows.column_blob(0)));
    if (!id) corrupt(path, "a file id is not 32 bytes");
    const auto hashes = file_rows.column_blob(3);
    if (hashes.size() % Sha256Digest::kSize != 0) {
      corrupt(path, fmt::format("file {} has a partial chunk hash", to_hex(*id)));
    }
    File& file = files[*id];
    file.size = static_cast<std::uint64_t>(file_rows.column_int(1));
    file.chunk_size = static_cast<std::uint32_t>(file_rows.column_int(2));
    file.replicas = static_cast<std::uint32_t>(std::clamp<std::int64_t>(file_rows.column_int(4), 0, 1000));
    file.chunk_hashes.resize(hashes.size() / Sha256Digest::kSize);
    for (std::size_t i = 0; i < file.chunk_hashes.size(); ++i) {
      std::copy_n(hashes.begin() + static_cast<std::ptrdiff_t>(i * Sha256Digest::kSize), Sha256Digest::kSize,
                  file.chunk_hashes[i].bytes.begin());
    }
  }

  auto name_rows = db->prepare("SELECT file_id, name FROM file_names ORDER BY file_id, position", "load file names");
  while (name_rows.step()) {
    const auto id = file_id_from_bytes(as_chars(name_rows.column_blob(0)));
    const auto file = id ? files.find(*id) : files.end();
    if (file == files.end()) corrupt(path, "a file name belongs to no known file");
    file->second.names.emplace_back(name_rows.column_text(1));
  }

  auto holder_rows = db->prepare("SELECT peer_id, file_id, partial FROM holders", "load holders");
  while (holder_rows.step()) {
    const auto peer_id = peer_id_from_bytes(as_chars(holder_rows.column_blob(0)));
    const auto file_id = file_id_from_bytes(as_chars(holder_rows.column_blob(1)));
    const auto peer = peer_id ? peers.find(*peer_id) : peers.end();
    const auto file = file_id ? files.find(*file_id) : files.end();
    if (peer == peers.end() || file == files.end()) {
      corrupt(path, "a holder refers to an unknown peer or file");
    }
    Holding holding{&peer->second, std::nullopt};
    if (!holder_rows.column_is_null(2)) {
      const auto chunks = static_cast<std::uint32_t>(file->second.chunk_hashes.size());
      holding.partial = Bitfield::from_wire(as_chars(holder_rows.column_blob(2)), chunks);
      if (!holding.partial) {
        corrupt(path, fmt::format("a bitfield of file {} does not fit its {} chunks", to_hex(*file_id), chunks));
      }
    }
    file->second.holders.append(*peer_id, std::move(holding));
    if (peer->second.files.insert(*file_id).second) peer->second.chunks += file->second.chunk_hashes.size();
  }
  for (auto& [id, file] : files) {
    file.holders.sort();
    if (file.holders.empty()) orphans.insert(id);
  }
  if (shared) {
    // The log position of this snapshot: sync applies what came after.
    auto max_seq = db->prepare("SELECT COALESCE(MAX(seq), 0) FROM changes", "read the change log position");
    if (max_seq.step()) last_seq = max_seq.column_int(0);
    max_seq.reset();
  }
}

void Registry::Impl::set_last_seen(Peer& peer, std::int64_t ms) {
  if (peer.last_seen_ms == ms) return;
  peers_by_last_seen.erase({peer.last_seen_ms, peer.id});
  peer.last_seen_ms = ms;
  peers_by_last_seen.emplace(ms, peer.id);
}

std::uint32_t Registry::Impl::count_live_holders(const File& file, std::int64_t now_ms) const {
  std::uint32_t count = 0;
  for (const auto& [id, holding] : file.holders) {
    if (live(*holding.peer, now_ms)) ++count;
  }
  return count;
}

void Registry::Impl::refill(Bucket& bucket, std::int64_t now_ms) const {
  const std::int64_t per_minute = limits.new_peers_per_minute;
  const std::int64_t capacity = per_minute * kMinute;
  // The system clock may step back; time never runs backwards for a bucket.
  if (now_ms <= bucket.updated_ms) return;
  // Past a minute the bucket is full whatever it held (and no overflow).
  const std::int64_t elapsed = std::min(now_ms - bucket.updated_ms, kMinute);
  bucket.credit = std::min(capacity, bucket.credit + elapsed * per_minute);
  bucket.updated_ms = now_ms;
}

void Registry::Impl::take_new_peer_token(const std::string& source, std::int64_t now_ms) {
  const std::uint32_t per_minute = limits.new_peers_per_minute;
  if (per_minute == 0) return;
  auto [it, inserted] = new_peer_buckets.try_emplace(source, Bucket{std::int64_t{per_minute} * kMinute, now_ms});
  Bucket& bucket = it->second;
  refill(bucket, now_ms);
  if (bucket.credit < kMinute) {
    throw Error(Errc::unavailable, fmt::format("too many new peer identities from {}: the central server takes at "
                                               "most {} a minute from one address; retry later",
                                               source, per_minute));
  }
  bucket.credit -= kMinute;
}

std::size_t Registry::Impl::forget_peers(std::int64_t cutoff_ms, std::size_t max_rows, bool& more) {
  // The least recently seen come first; stop at the first one still wanted.
  std::vector<Peer*> stale;
  std::size_t rows = 0;
  for (const auto& [last_seen_ms, id] : peers_by_last_seen) {
    if (last_seen_ms > cutoff_ms) break;
    Peer& peer = peers.at(id);
    const std::size_t cost = 1 + peer.files.size();
    if (rows + cost > max_rows) {
      more = true;
      // A peer larger than a whole step loses its holdings over several.
      if (stale.empty()) forget_holdings(peer, max_rows);
      break;
    }
    stale.push_back(&peer);
    rows += cost;
  }
  if (stale.empty()) return 0;

  write([&] {
    for (const Peer* peer : stale) {
      for (const FileId& file : peer->files) {
        delete_holder.bind_blob(1, peer->id.bytes).bind_blob(2, file.bytes);
        delete_holder.run();
      }
      delete_peer.bind_blob(1, peer->id.bytes);
      delete_peer.run();
    }
  });

  for (Peer* peer : stale) {
    record(kPeerChanged, peer->id, {});
    for (const FileId& file_id : peer->files) {
      File& file = files.at(file_id);
      file.holders.erase(peer->id);
      if (file.holders.empty()) orphans.insert(file_id);
    }
    if (peer->last_seen_dirty) std::erase(dirty_peers, peer);
    peers_by_last_seen.erase({peer->last_seen_ms, peer->id});
    const PeerId id = peer->id;
    peers.erase(id);
  }
  return stale.size();
}

void Registry::Impl::forget_holdings(Peer& peer, std::size_t count) {
  std::vector<FileId> gone;
  for (auto it = peer.files.begin(); it != peer.files.end() && gone.size() < count; ++it) gone.push_back(*it);
  write([&] {
    for (const FileId& file : gone) {
      delete_holder.bind_blob(1, peer.id.bytes).bind_blob(2, file.bytes);
      delete_holder.run();
    }
  });
  for (const FileId& file_id : gone) {
    record(kHolderChanged, peer.id, file_id);
    File& file = files.at(file_id);
    file.holders.erase(peer.id);
    if (file.holders.empty()) orphans.insert(file_id);
    peer.files.erase(file_id);
    peer.chunks -= file.chunk_hashes.size();
  }
}

std::size_t Registry::Impl::forget_orphans(std::size_t max_rows, bool& more) {
  std::vector<FileId> gone;
  std::size_t rows = 0;
  for (const FileId& id : orphans) {
    const std::size_t cost = 1 + files.at(id).names.size();
    if (!gone.empty() && rows + cost > max_rows) {
      more = true;
      break;
    }
    gone.push_back(id);
    rows += cost;
  }
  if (gone.empty()) return 0;

  write([&] {
    for (const FileId& id : gone) {
      delete_file_names.bind_blob(1, id.bytes);
      delete_file_names.run();
      delete_file.bind_blob(1, id.bytes);
      delete_file.run();
    }
  });

  for (const FileId& id : gone) {
    record(kFileChanged, {}, id);
    files.erase(id);
    orphans.erase(id);
  }
  return gone.size();
}

namespace {

std::int64_t wall_clock_ms() {
  return to_unix_ms(SystemClock::now());
}

}  // namespace

void Registry::Impl::append_changes(std::int64_t now_ms) {
  if (pending_changes.empty()) return;
  write([&] {
    lock_log.run();
    // Many rows per INSERT: a round trip per row would double what an
    // announce costs on PostgreSQL.
    std::vector<const Change*> all;
    all.reserve(pending_changes.size());
    for (const Change& change : pending_changes) all.push_back(&change);
    for (std::size_t first = 0; first < all.size(); first += kChangesPerInsert) {
      const std::size_t count = std::min(kChangesPerInsert, all.size() - first);
      std::string sql = "INSERT INTO changes (origin, kind, peer_id, file_id, at_ms) VALUES ";
      for (std::size_t i = 0; i < count; ++i) {
        const std::size_t p = i * 5;
        sql += fmt::format("{}(?{}, ?{}, ?{}, ?{}, ?{})", i == 0 ? "" : ", ", p + 1, p + 2, p + 3, p + 4, p + 5);
      }
      db::Statement insert;
      if (count == kChangesPerInsert && append_change_full) {
        insert = std::move(*append_change_full);
        append_change_full.reset();
      } else {
        insert = db->prepare(sql, "log changes");
      }
      for (std::size_t i = 0; i < count; ++i) {
        const Change& change = *all[first + i];
        const int p = static_cast<int>(i * 5);
        insert.bind_int(p + 1, origin).bind_int(p + 2, change.kind);
        if (change.kind == kFileChanged) {
          insert.bind_null(p + 3);
        } else {
          insert.bind_blob(p + 3, change.peer.bytes);
        }
        if (change.kind == kPeerChanged) {
          insert.bind_null(p + 4);
        } else {
          insert.bind_blob(p + 4, change.file.bytes);
        }
        insert.bind_int(p + 5, now_ms);
      }
      insert.run();
      // The full-size statement is kept (prepared on the server from its
      // second use); the tail's size varies, so it is not.
      if (count == kChangesPerInsert) append_change_full = std::move(insert);
    }
  });
  pending_changes.clear();
}

void Registry::Impl::drop_peer(const PeerId& id) {
  const auto it = peers.find(id);
  if (it == peers.end()) return;
  Peer& peer = it->second;
  for (const FileId& file_id : peer.files) {
    const auto file = files.find(file_id);
    if (file == files.end()) continue;
    file->second.holders.erase(id);
    if (file->second.holders.empty()) orphans.insert(file_id);
  }
  if (peer.last_seen_dirty) std::erase(dirty_peers, &peer);
  peers_by_last_seen.erase({peer.last_seen_ms, id});
  peers.erase(it);
}

void Registry::Impl::drop_holding(File& file, const FileId& file_id, const PeerId& peer_id) {
  if (file.holders.erase(peer_id) == 0) return;
  const auto peer = peers.find(peer_id);
  if (peer != peers.end() && peer->second.files.erase(file_id) != 0) peer->second.chunks -= file.chunk_hashes.size();
  if (file.holders.empty()) orphans.insert(file_id);
}

void Registry::Impl::drop_file(const FileId& id) {
  const auto it = files.find(id);
  if (it == files.end()) return;
  for (const auto& [peer_id, holding] : it->second.holders) {
    const auto peer = peers.find(peer_id);
    if (peer != peers.end() && peer->second.files.erase(id) != 0) {
      peer->second.chunks -= it->second.chunk_hashes.size();
    }
  }
  files.erase(it);
  orphans.erase(id);
}

void Registry::Impl::apply_peer(const PeerId& id) {
  select_peer.bind_blob(1, id.bytes);
  if (!select_peer.step()) {
    drop_peer(id);
    return;
  }
  const std::string host(select_peer.column_text(0));
  const auto port = static_cast<std::uint16_t>(select_peer.column_int(1));
  const std::int64_t last_seen_ms = select_peer.column_int(2);
  select_peer.reset();
  auto [it, inserted] = peers.try_emplace(id);
  Peer& peer = it->second;
  if (inserted) {
    peer.id = id;
    peer.last_seen_ms = last_seen_ms;
    peers_by_last_seen.emplace(last_seen_ms, id);
  } else {
    // A heartbeat this central holds in memory may be newer than the row.
    set_last_seen(peer, std::max(peer.last_seen_ms, last_seen_ms));
  }
  peer.host = host;
  peer.port = port;
}

bool Registry::Impl::apply_file(const FileId& id) {
  select_file.bind_blob(1, id.bytes);
  if (!select_file.step()) {
    drop_file(id);
    return false;
  }
  auto [it, inserted] = files.try_emplace(id);
  File& file = it->second;
  if (inserted) {
    const auto hashes = select_file.column_blob(2);
    file.size = static_cast<std::uint64_t>(select_file.column_int(0));
    file.chunk_size = static_cast<std::uint32_t>(select_file.column_int(1));
    file.chunk_hashes.resize(hashes.size() / Sha256Digest::kSize);
    for (std::size_t i = 0; i < file.chunk_hashes.size(); ++i) {
      std::copy_n(hashes.begin() + static_cast<std::ptrdiff_t>(i * Sha256Digest::kSize), Sha256Digest::kSize,
                  file.chunk_hashes[i].bytes.begin());
    }
    orphans.insert(id);  // until a holder is applied
  }
  // Another central's register-file --replicas may have changed the target.
  file.replicas = static_cast<std::uint32_t>(std::clamp<std::int64_t>(select_file.column_int(3), 0, 1000));
  select_file.reset();
  std::vector<std::string> names;
  select_names.bind_blob(1, id.bytes);
  while (select_names.step()) names.emplace_back(select_names.column_text(0));
  file.names = std::move(names);
  return true;
}

void Registry::Impl::apply_holder(const PeerId& peer_id, const FileId& file_id) {
  if (!peers.contains(peer_id)) apply_peer(peer_id);
  if (!apply_file(file_id)) return;
  File& file = files.at(file_id);
  const auto peer_it = peers.find(peer_id);
  select_holder.bind_blob(1, peer_id.bytes).bind_blob(2, file_id.bytes);
  const bool found = select_holder.step();
  if (!found || peer_it == peers.end()) {
    select_holder.reset();
    drop_holding(file, file_id, peer_id);
    return;
  }
  std::optional<Bitfield> partial;
  if (!select_holder.column_is_null(0)) {
    partial = Bitfield::from_wire(as_chars(select_holder.column_blob(0)),
                                  static_cast<std::uint32_t>(file.chunk_hashes.size()));
    if (!partial) {
      select_holder.reset();
      drop_holding(file, file_id, peer_id);
      return;
    }
  }
  select_holder.reset();
  Peer& peer = peer_it->second;
  file.holders.insert_or_assign(peer_id, Holding{&peer, std::move(partial)});
  if (peer.files.insert(file_id).second) peer.chunks += file.chunk_hashes.size();
  orphans.erase(file_id);
}

namespace {

PeerRecord record_of(const PeerId& id, const std::string& host, std::uint16_t port, std::int64_t last_seen_ms) {
  return PeerRecord{id, host, port, from_unix_ms(last_seen_ms)};
}

bool same_partial(const std::optional<Bitfield>& a, const std::optional<Bitfield>& b) {
  if (a.has_value() != b.has_value()) return false;
  return !a || (a->size() == b->size() && a->to_wire() == b->to_wire());
}

}  // namespace

Registry::Registry(const std::filesystem::path& data_dir, std::chrono::milliseconds expiry, Limits limits)
    : Registry(db::parse_location("sqlite", data_dir, "registry.db"), expiry, limits) {}

Registry::Registry(const db::Location& location, std::chrono::milliseconds expiry, Limits limits)
    : impl_(std::make_unique<Impl>(location, expiry, limits)) {}

Registry::~Registry() {
  // A clean shutdown keeps the heartbeats too (and commits whatever is
  // pending, though the server commits before it answers); a failure here
  // only loses what nobody was told was stored.
  try {
    flush_last_seen();
  } catch (...) {
  }
}

void Registry::upsert_peer(const PeerId& id, const std::string& host, std::uint16_t port, SystemClock::time_point now,
                           std::string_view source) {
  impl_->catch_up();
  const std::int64_t now_ms = to_unix_ms(now);
  if (!impl_->peers.contains(id)) impl_->take_new_peer_token(source.empty() ? host : std::string(source), now_ms);
  impl_->write([&] {
    impl_->upsert_peer.bind_blob(1, id.bytes).bind_text(2, host).bind_int(3, port);
    impl_->upsert_peer.bind_int(4, now_ms);
    impl_->upsert_peer.run();
  });

  auto [it, inserted] = impl_->peers.try_emplace(id);
  Impl::Peer& peer = it->second;
  if (inserted) {
    peer.id = id;
    peer.last_seen_ms = now_ms;
    impl_->peers_by_last_seen.emplace(now_ms, id);
  } else {
    impl_->set_last_seen(peer, now_ms);
  }
  peer.host = host;
  peer.port = port;
  // The row now holds the newest value; flush_last_seen skips this peer.
  peer.last_seen_dirty = false;
  impl_->record(Impl::kPeerChanged, id, {});
}

bool Registry::touch_peer(const PeerId& id, SystemClock::time_point now) {
  const auto it = impl_->peers.find(id);
  if (it == impl_->peers.end()) return false;
  Impl::Peer& peer = it->second;
  impl_->set_last_seen(peer, to_unix_ms(now));
  if (!peer.last_seen_dirty) {
    peer.last_seen_dirty = true;
    impl_->dirty_peers.push_back(&peer);
  }
  return true;
}

FileId Registry::announce(const PeerId& peer_id, const Manifest& manifest, std::optional<Bitfield> partial) {
  impl_->catch_up();
  const auto peer_it = impl_->peers.find(peer_id);
  if (peer_it == impl_->peers.end()) {
    throw Error(Errc::protocol, fmt::format("registry: announce from unknown peer {}", to_hex(peer_id)));
  }
  if (partial && partial->size() != manifest.chunk_count()) {
    throw Error(Errc::bad_request, fmt::format("registry: announced bitfield has {} bits for {} chunks",
                                               partial->size(), manifest.chunk_count()));
  }
  // A holder with every chunk is a complete holder; one form for one fact.
  if (partial && partial->all()) partial.reset();

  const FileId id = manifest.file_id();
  auto file_it = impl_->files.find(id);
  const bool new_file = file_it == impl_->files.end();
  const std::vector<std::string>* names = new_file ? nullptr : &file_it->second.names;
  const std::size_t name_count = names != nullptr ? names->size() : 0;
  const bool add_name = !manifest.name.empty() && name_count < kMaxNamesPerFile &&
                        (names == nullptr || std::find(names->begin(), names->end(), manifest.name) == names->end());
  const Impl::Holding* current = nullptr;
  if (!new_file) {
    const auto holder_it = file_it->second.holders.find(peer_id);
    if (holder_it != file_it->second.holders.end()) current = &holder_it->second;
  }
  // Peers re-announce everything on reconnect; an unchanged fact costs no write.
  if (!new_file && !add_name && current != nullptr && same_partial(current->partial, partial)) {
    return id;
  }
  Impl::Peer& peer = peer_it->second;
  const std::uint64_t chunks = manifest.chunk_count();
  if (current == nullptr) {
    const Limits& limits = impl_->limits;
    if (peer.files.size() >= limits.max_files_per_peer) {
      throw Error(Errc::limit,
                  fmt::format("this peer already holds {} files, the most the central server keeps for one peer",
                              peer.files.size()));
    }
    if (peer.chunks + chunks > limits.max_chunks_per_peer) {
      throw Error(Errc::limit, fmt::format("this peer's files would have {} chunks, more than the {} the central "
                                           "server keeps for one peer",
                                           peer.chunks + chunks, limits.max_chunks_per_peer));
    }
  }

  impl_->write([&] {
    if (new_file) {
      impl_->insert_file.bind_blob(1, id.bytes)
          .bind_int(2, static_cast<std::int64_t>(manifest.size))
          .bind_int(3, manifest.chunk_size)
          .bind_blob(4, join_hashes(manifest.chunk_hashes));
      impl_->insert_file.run();
    }
    if (add_name) {
      impl_->insert_name.bind_blob(1, id.bytes)
          .bind_int(2, static_cast<std::int64_t>(name_count))
          .bind_text(3, manifest.name);
      impl_->insert_name.run();
    }
    impl_->upsert_holder.bind_blob(1, peer_id.bytes).bind_blob(2, id.bytes);
    if (partial) {
      impl_->upsert_holder.bind_blob(3, partial->to_wire());
    } else {
      impl_->upsert_holder.bind_null(3);
    }
    impl_->upsert_holder.run();
  });

  // Memory changes only after the writes succeeded; a failed one reloaded
  // memory from the store, so both views agree.
  if (new_file) {
    Impl::File file;
    file.size = manifest.size;
    file.chunk_size = manifest.chunk_size;
    file.chunk_hashes = manifest.chunk_hashes;
    file_it = impl_->files.emplace(id, std::move(file)).first;
  }
  if (add_name) file_it->second.names.push_back(manifest.name);
  file_it->second.holders.insert_or_assign(peer_id, Impl::Holding{&peer, std::move(partial)});
  if (peer.files.insert(id).second) peer.chunks += chunks;
  impl_->orphans.erase(id);
  impl_->record(Impl::kHolderChanged, peer_id, id);
  return id;
}

bool Registry::withdraw(const PeerId& peer_id, const FileId& file_id) {
  impl_->catch_up();
  const auto file_it = impl_->files.find(file_id);
  if (file_it == impl_->files.end()) return false;
  auto& holders = file_it->second.holders;
  const auto holder_it = holders.find(peer_id);
  if (holder_it == holders.end()) return false;

  impl_->write([&] {
    impl_->delete_holder.bind_blob(1, peer_id.bytes).bind_blob(2, file_id.bytes);
    impl_->delete_holder.run();
  });

  holders.erase(holder_it);
  Impl::Peer& peer = impl_->peers.at(peer_id);
  if (peer.files.erase(file_id) != 0) peer.chunks -= file_it->second.chunk_hashes.size();
  if (holders.empty()) impl_->orphans.insert(file_id);
  impl_->record(Impl::kHolderChanged, peer_id, file_id);
  return true;
}

bool Registry::set_replicas(const FileId& file_id, std::uint32_t replicas) {
  impl_->catch_up();
  const auto it = impl_->files.find(file_id);
  if (it == impl_->files.end()) return false;
  if (it->second.replicas == replicas) return true;
  impl_->write([&] {
    impl_->update_replicas.bind_blob(1, file_id.bytes).bind_int(2, replicas);
    impl_->update_replicas.run();
  });
  it->second.replicas = replicas;
  impl_->record(Impl::kFileChanged, {}, file_id);
  return true;
}

std::vector<std::pair<FileId, std::uint32_t>> Registry::replica_targets() const {
  std::vector<std::pair<FileId, std::uint32_t>> targets;
  for (const auto& [id, file] : impl_->files) {
    if (file.replicas > 0) targets.emplace_back(id, file.replicas);
  }
  return targets;
}

std::optional<ReplicaFacts> Registry::replica_facts(const FileId& file_id, SystemClock::time_point now) const {
  const auto it = impl_->files.find(file_id);
  if (it == impl_->files.end()) return std::nullopt;
  const std::int64_t now_ms = to_unix_ms(now);
  ReplicaFacts facts;
  facts.size = it->second.size;
  facts.live_complete.reserve(it->second.holders.size());
  for (const auto& [peer_id, holding] : it->second.holders) {
    if (!holding.partial && impl_->live(*holding.peer, now_ms)) facts.live_complete.push_back(peer_id);
  }
  return facts;
}

bool Registry::peer_live(const PeerId& peer_id, SystemClock::time_point now) const {
  const auto it = impl_->peers.find(peer_id);
  return it != impl_->peers.end() && impl_->live(it->second, to_unix_ms(now));
}

std::vector<FileSummary> Registry::list_files(std::optional<FileId> after, std::size_t limit,
                                              SystemClock::time_point now) const {
  const std::int64_t now_ms = to_unix_ms(now);
  std::vector<FileSummary> page;
  page.reserve(std::min(limit, impl_->files.size()));
  auto it = after ? impl_->files.upper_bound(*after) : impl_->files.begin();
  for (; it != impl_->files.end() && page.size() < limit; ++it) {
    const Impl::File& file = it->second;
    page.push_back(FileSummary{it->first, file.names.empty() ? std::string() : file.names.front(), file.size,
                               impl_->count_live_holders(file, now_ms)});
  }
  return page;
}

std::optional<FileSummary> Registry::summary(const FileId& id, SystemClock::time_point now) const {
  const auto it = impl_->files.find(id);
  if (it == impl_->files.end()) return std::nullopt;
  const Impl::File& file = it->second;
  return FileSummary{id, file.names.empty() ? std::string() : file.names.front(), file.size,
                     impl_->count_live_holders(file, to_unix_ms(now))};
}

std::size_t Registry::file_count() const noexcept {
  return impl_->files.size();
}

std::vector<PeerRecord> Registry::live_peers(std::optional<FileId> file, SystemClock::time_point now) const {
  const std::int64_t now_ms = to_unix_ms(now);
  std::vector<PeerRecord> result;
  if (file) {
    const auto file_it = impl_->files.find(*file);
    if (file_it == impl_->files.end()) return result;
    // One allocation, not one per doubling: a popular file lists hundreds.
    result.reserve(file_it->second.holders.size());
    for (const auto& [id, holding] : file_it->second.holders) {
      const Impl::Peer& peer = *holding.peer;
      if (impl_->live(peer, now_ms)) {
        result.push_back(record_of(id, peer.host, peer.port, peer.last_seen_ms));
      }
    }
    return result;
  }
  // Most recently seen first; stop at the first stale peer.
  for (auto it = impl_->peers_by_last_seen.rbegin(); it != impl_->peers_by_last_seen.rend(); ++it) {
    const Impl::Peer& peer = impl_->peers.at(it->second);
    if (!impl_->live(peer, now_ms)) break;
    result.push_back(record_of(peer.id, peer.host, peer.port, peer.last_seen_ms));
  }
  return result;
}

std::optional<FileDetails> Registry::file(const FileId& id, SystemClock::time_point now) const {
  const auto it = impl_->files.find(id);
  if (it == impl_->files.end()) return std::nullopt;
  const Impl::File& file = it->second;
  const std::int64_t now_ms = to_unix_ms(now);
  FileDetails details;
  details.manifest.size = file.size;
  details.manifest.chunk_size = file.chunk_size;
  details.manifest.chunk_hashes = file.chunk_hashes;
  details.manifest.name = file.names.empty() ? std::string() : file.names.front();
  details.names = file.names;
  details.replicas = file.replicas;
  details.live_holders.reserve(file.holders.size());
  for (const auto& [peer_id, holding] : file.holders) {
    const Impl::Peer& peer = *holding.peer;
    if (!impl_->live(peer, now_ms)) continue;
    details.live_holders.push_back(
        HolderRecord{record_of(peer_id, peer.host, peer.port, peer.last_seen_ms), holding.partial});
  }
  return details;
}

Forgotten Registry::forget_stale(SystemClock::time_point now, std::size_t max_rows) {
  impl_->catch_up();
  const std::int64_t now_ms = to_unix_ms(now);
  Forgotten forgotten;
  forgotten.peers = impl_->forget_peers(now_ms - impl_->limits.forget_after.count(), max_rows, forgotten.more);
  // With peers still due, the files go in a later call: one call stays bounded.
  if (!forgotten.more) forgotten.files = impl_->forget_orphans(max_rows, forgotten.more);
  if (impl_->shared) {
    impl_->write([&] {
      impl_->trim_changes.bind_int(1, wall_clock_ms() - kChangeLogKeepMs);
      impl_->trim_changes.run();
    });
  }
  for (auto it = impl_->new_peer_buckets.begin(); it != impl_->new_peer_buckets.end();) {
    impl_->refill(it->second, now_ms);
    if (it->second.credit >= std::int64_t{impl_->limits.new_peers_per_minute} * Impl::kMinute) {
      it = impl_->new_peer_buckets.erase(it);
    } else {
      ++it;
    }
  }
  return forgotten;
}

bool Registry::shared() const noexcept {
  return impl_->shared;
}

std::size_t Registry::sync() {
  Impl& impl = *impl_;
  if (!impl.shared || impl.batch) return 0;
  const std::int64_t now_ms = wall_clock_ms();
  // Behind for longer than the log is sure to keep (or memory is known to
  // be wrong): start again from a full snapshot.
  if (impl.needs_reload || (impl.last_sync_ms != 0 && now_ms - impl.last_sync_ms > kChangeLogKeepMs / 2)) {
    impl.reload();
    impl.last_sync_ms = now_ms;
    return 0;
  }
  struct Row {
    std::int64_t seq = 0;
    std::int64_t origin = 0;
    std::int64_t kind = 0;
    std::optional<PeerId> peer;
    std::optional<FileId> file;
  };
  std::size_t applied = 0;
  for (int round = 0; round < 10; ++round) {
    std::vector<Row> rows;
    impl.read_changes.bind_int(1, impl.last_seq).bind_int(2, kChangesPerRead);
    while (impl.read_changes.step()) {
      Row row;
      row.seq = impl.read_changes.column_int(0);
      row.origin = impl.read_changes.column_int(1);
      row.kind = impl.read_changes.column_int(2);
      if (!impl.read_changes.column_is_null(3))
        row.peer = peer_id_from_bytes(as_chars(impl.read_changes.column_blob(3)));
      if (!impl.read_changes.column_is_null(4))
        row.file = file_id_from_bytes(as_chars(impl.read_changes.column_blob(4)));
      rows.push_back(row);
    }
    for (const Row& row : rows) {
      if (row.origin != impl.origin) {
        // Each change reloads the rows it names: applying one twice, or
        // after a later one, leaves memory equal to the store.
        if (row.kind == Impl::kPeerChanged && row.peer) impl.apply_peer(*row.peer);
        if (row.kind == Impl::kHolderChanged && row.peer && row.file) impl.apply_holder(*row.peer, *row.file);
        if (row.kind == Impl::kFileChanged && row.file) impl.apply_file(*row.file);
        ++applied;
      }
      impl.last_seq = row.seq;
    }
    if (static_cast<std::int64_t>(rows.size()) < kChangesPerRead) break;
  }
  impl.last_sync_ms = now_ms;
  return applied;
}

std::size_t Registry::peer_count() const noexcept {
  return impl_->peers.size();
}

void Registry::flush_last_seen() {
  // A reload (catch_up) drops what memory held: the store's times stand.
  if (!impl_->dirty_peers.empty()) impl_->catch_up();
  if (!impl_->dirty_peers.empty()) {
    impl_->write([&] {
      for (const Impl::Peer* peer : impl_->dirty_peers) {
        // upsert_peer may have written the newest value already.
        if (!peer->last_seen_dirty) continue;
        impl_->update_last_seen.bind_blob(1, peer->id.bytes).bind_int(2, peer->last_seen_ms);
        impl_->update_last_seen.run();
      }
    });
    for (Impl::Peer* peer : impl_->dirty_peers) {
      // Other centrals refresh these peers' liveness from their rows.
      if (peer->last_seen_dirty) impl_->record(Impl::kPeerChanged, peer->id, {});
      peer->last_seen_dirty = false;
    }
    impl_->dirty_peers.clear();
  }
  commit();
}

db::Database& Registry::database() {
  return *impl_->db;
}

void Registry::write(const std::function<void()>& statements) {
  impl_->catch_up();
  impl_->write(statements);
}

bool Registry::has_uncommitted() const noexcept {
  return impl_->batch;
}

std::uint64_t Registry::abandoned_batches() const noexcept {
  return impl_->abandoned;
}

void Registry::commit() {
  if (!impl_->batch) return;
  try {
    if (impl_->shared) impl_->append_changes(wall_clock_ms());
    impl_->db->commit();
    impl_->batch = false;
  } catch (...) {
    impl_->abandon_batch();
    throw;
  }
}

}  // namespace p2pshare::central
