#include "peer/state.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string_view>

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/peer_server.hpp"

namespace p2pshare::peer {
namespace {

// kMigrations[v] brings peer.db at schema version v to v + 1
// (sqlite::migrate). Append a step for every schema change; never edit a
// released one. Step 1 says IF NOT EXISTS because builds before versioning
// created these tables and left the version at 0.
constexpr std::array<std::string_view, 1> kMigrations = {
    R"sql(
CREATE TABLE IF NOT EXISTS shared (
  file_id BLOB PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
  chunk_size INTEGER NOT NULL, hashes BLOB NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS downloads (
  file_id BLOB PRIMARY KEY, name TEXT NOT NULL, directory TEXT NOT NULL, destination TEXT NOT NULL,
  replace INTEGER NOT NULL, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL, hashes BLOB NOT NULL,
  have BLOB NOT NULL, clean INTEGER NOT NULL DEFAULT 0, part_size INTEGER NOT NULL DEFAULT 0,
  part_mtime_ns INTEGER NOT NULL DEFAULT 0);
)sql",
};

// A hash list that does not fit the size and chunk size stored beside it is
// corrupt state: an error, never a guess.
std::vector<Sha256Digest> stored_hashes(std::span<const std::uint8_t> blob, const Manifest& manifest) {
  auto hashes = decode_chunk_hashes(blob, chunk_count_for(manifest.size, manifest.chunk_size));
  if (!hashes) throw Error(Errc::io, "peer state: corrupt chunk hash list");
  return std::move(*hashes);
}

}  // namespace

namespace {

// Written under a temporary name, synced and renamed: a crash never leaves
// half a cookie.
void write_cookie(const std::filesystem::path& path, const std::string& hex) {
  const std::string text = hex + "\n";
  const auto temp = path.string() + ".tmp";
  store::FileHandle out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out) throw Error(Errc::io, fmt::format("cannot create {}: {}", temp, errno_text(errno)));
  if (::write(out.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::fsync(out.get()) != 0 ||
      ::rename(temp.c_str(), path.c_str()) != 0) {
    throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
  }
  store::FileHandle dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
}

}  // namespace

std::string load_or_create_cookie(const std::filesystem::path& path) {
  store::FileHandle file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (file) {
    std::string bytes(kCookieFileMax + 1, '\0');
    const ssize_t n = ::read(file.get(), bytes.data(), bytes.size());
    bytes.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    if (auto hex = cookie_hex_of(bytes)) {
      // The form from before the HTTP side: 32 raw bytes, rewritten as text.
      if (bytes.size() == 32) write_cookie(path, *hex);
      return *hex;
    }
    throw Error(Errc::io, fmt::format("{} is damaged: remove it to make a new one", path.string()));
  }
  if (errno != ENOENT) {
    throw Error(Errc::io, fmt::format("cannot read {}: {}", path.string(), errno_text(errno)));
  }
  std::array<std::uint8_t, 32> secret{};
  random_bytes(secret);
  std::string hex = to_hex(std::span<const std::uint8_t>(secret));
  write_cookie(path, hex);
  return hex;
}

PeerState::PeerState(const std::filesystem::path& data_dir) : db_(data_dir / "peer.db", "peer state") {
  sqlite::open_schema(db_, data_dir / "peer.db", kMigrations);
  put_shared_ = db_.prepare(
      "INSERT INTO shared (file_id, name, path, size, chunk_size, hashes, uploaded) VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
      "?7) "
      "ON CONFLICT(file_id) DO UPDATE SET name = excluded.name, path = excluded.path",
      "save shared file");
  remove_shared_ = db_.prepare("DELETE FROM shared WHERE file_id = ?1", "remove shared file");
  add_uploaded_ = db_.prepare("UPDATE shared SET uploaded = uploaded + ?2 WHERE file_id = ?1", "count upload");
  put_download_ = db_.prepare(
      "INSERT OR REPLACE INTO downloads (file_id, name, directory, destination, replace, size, chunk_size, hashes, "
      "have, clean, part_size, part_mtime_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
      "save download");
  update_resume_ =
      db_.prepare("UPDATE downloads SET have = ?2, clean = ?3, part_size = ?4, part_mtime_ns = ?5 WHERE file_id = ?1",
                  "save resume state");
  remove_download_ = db_.prepare("DELETE FROM downloads WHERE file_id = ?1", "remove download");
  open_identity_table();
}

// Kept apart from the versioned schema above: a table of its own, created if
// missing, so an older peer.db gains it without a migration and a row that is
// missing only means "not known yet" (the file is then hashed again once).
void PeerState::open_identity_table() {
  db_.exec(R"sql(
    CREATE TABLE IF NOT EXISTS shared_identity (
      file_id BLOB PRIMARY KEY, device INTEGER NOT NULL, inode INTEGER NOT NULL, size INTEGER NOT NULL,
      mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL);
  )sql",
           "create the shared file identity table");
  put_identity_ = db_.prepare(
      "INSERT OR REPLACE INTO shared_identity (file_id, device, inode, size, mtime_ns, ctime_ns) "
      "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
      "save shared file identity");
  remove_identity_ = db_.prepare("DELETE FROM shared_identity WHERE file_id = ?1", "remove shared file identity");
  // Like shared_identity: a table of its own, so an older peer.db gains it
  // without a migration; no row = a public file, as before accounts.
  db_.exec(
      "CREATE TABLE IF NOT EXISTS shared_groups (file_id BLOB NOT NULL, group_name TEXT NOT NULL, "
      "PRIMARY KEY (file_id, group_name)) WITHOUT ROWID",
      "create the shared file group table");
  // Replica targets and cache copies: a table of its own too (no row = no
  // target, not a cache copy).
  db_.exec(
      "CREATE TABLE IF NOT EXISTS replica_state (file_id BLOB PRIMARY KEY NOT NULL, replicas INTEGER NOT NULL, "
      "cached INTEGER NOT NULL, last_used_ms INTEGER NOT NULL) WITHOUT ROWID",
      "create the replica table");
}

std::map<FileId, ReplicaRecord> PeerState::replica_records() {
  auto query = db_.prepare("SELECT file_id, replicas, cached, last_used_ms FROM replica_state", "load replica state");
  std::map<FileId, ReplicaRecord> out;
  while (query.step()) {
    const auto blob = query.column_blob(0);
    FileId id;
    if (blob.size() != id.bytes.size()) throw Error(Errc::io, "peer state: corrupt file id in replica_state");
    std::memcpy(id.bytes.data(), blob.data(), blob.size());
    out[id] = ReplicaRecord{static_cast<std::uint32_t>(std::clamp<std::int64_t>(query.column_int(1), 0, 16)),
                            query.column_int(2) != 0, query.column_int(3)};
  }
  return out;
}

void PeerState::put_replica_record(const FileId& id, const ReplicaRecord& record) {
  auto put = db_.prepare(
      "INSERT OR REPLACE INTO replica_state (file_id, replicas, cached, last_used_ms) VALUES (?1, ?2, ?3, ?4)",
      "save replica state");
  put.bind_blob(1, std::span<const std::uint8_t>(id.bytes))
      .bind_int(2, record.replicas)
      .bind_int(3, record.cached ? 1 : 0)
      .bind_int(4, record.last_used_ms);
  put.run();
}

void PeerState::remove_replica_record(const FileId& id) {
  auto del = db_.prepare("DELETE FROM replica_state WHERE file_id = ?1", "forget replica state");
  del.bind_blob(1, std::span<const std::uint8_t>(id.bytes));
  del.run();
}

void PeerState::put_shared_groups(const FileId& id, const std::vector<std::string>& groups) {
  auto transaction = db_.transaction();
  auto del = db_.prepare("DELETE FROM shared_groups WHERE file_id = ?1", "forget shared file groups");
  del.bind_blob(1, std::span<const std::uint8_t>(id.bytes));
  del.run();
  auto insert = db_.prepare("INSERT OR IGNORE INTO shared_groups (file_id, group_name) VALUES (?1, ?2)",
                            "save shared file group");
  for (const auto& group : groups) {
    insert.bind_blob(1, std::span<const std::uint8_t>(id.bytes)).bind_text(2, group);
    insert.run();
  }
  transaction.commit();
}

std::map<FileId, std::vector<std::string>> PeerState::shared_groups() {
  auto query = db_.prepare("SELECT file_id, group_name FROM shared_groups ORDER BY file_id, group_name",
                           "load shared file groups");
  std::map<FileId, std::vector<std::string>> out;
  while (query.step()) {
    const auto blob = query.column_blob(0);
    FileId id;
    if (blob.size() != id.bytes.size()) throw Error(Errc::io, "peer state: corrupt file id in shared_groups");
    std::memcpy(id.bytes.data(), blob.data(), blob.size());
    out[id].emplace_back(query.column_text(1));
  }
  return out;
}

std::map<FileId, store::FileIdentity> PeerState::shared_identities() {
  auto query = db_.prepare("SELECT file_id, device, inode, size, mtime_ns, ctime_ns FROM shared_identity",
                           "load shared file identities");
  std::map<FileId, store::FileIdentity> out;
  while (query.step()) {
    const auto blob = query.column_blob(0);
    FileId id;
    if (blob.size() != id.bytes.size()) throw Error(Errc::io, "peer state: corrupt file id in shared_identity");
    std::memcpy(id.bytes.data(), blob.data(), blob.size());
    out[id] = {static_cast<std::uint64_t>(query.column_int(1)), static_cast<std::uint64_t>(query.column_int(2)),
               static_cast<std::uint64_t>(query.column_int(3)), query.column_int(4), query.column_int(5)};
  }
  return out;
}

void PeerState::put_shared_identity(const FileId& id, const store::FileIdentity& identity) {
  put_identity_.bind_blob(1, std::span<const std::uint8_t>(id.bytes))
      .bind_int(2, static_cast<std::int64_t>(identity.device))
      .bind_int(3, static_cast<std::int64_t>(identity.inode))
      .bind_int(4, static_cast<std::int64_t>(identity.size))
      .bind_int(5, identity.mtime_ns)
      .bind_int(6, identity.ctime_ns);
  put_identity_.run();
}

std::vector<SharedRecord> PeerState::shared_files() {
  auto query =
      db_.prepare("SELECT file_id, name, path, size, chunk_size, hashes, uploaded FROM shared", "load shared files");
  std::vector<SharedRecord> out;
  auto groups = shared_groups();
  while (query.step()) {
    SharedRecord r;
    r.manifest.name = std::string(query.column_text(1));
    r.path = std::string(query.column_text(2));
    r.manifest.size = static_cast<std::uint64_t>(query.column_int(3));
    r.manifest.chunk_size = static_cast<std::uint32_t>(query.column_int(4));
    r.manifest.chunk_hashes = stored_hashes(query.column_blob(5), r.manifest);
    r.uploaded = static_cast<std::uint64_t>(query.column_int(6));
    if (auto g = groups.find(r.manifest.file_id()); g != groups.end()) r.groups = std::move(g->second);
    out.push_back(std::move(r));
  }
  return out;
}

void PeerState::put_shared(const SharedRecord& r) {
  const FileId id = r.manifest.file_id();
  // Groups first: a crash in between leaves rows that only restrict.
  put_shared_groups(id, r.groups);
  put_shared_.bind_blob(1, std::span<const std::uint8_t>(id.bytes))
      .bind_text(2, r.manifest.name)
      .bind_text(3, r.path.string())
      .bind_int(4, static_cast<std::int64_t>(r.manifest.size))
      .bind_int(5, r.manifest.chunk_size)
      .bind_blob(6, encode_chunk_hashes(r.manifest.chunk_hashes))
      .bind_int(7, static_cast<std::int64_t>(r.uploaded));
  put_shared_.run();
}

void PeerState::remove_shared(const FileId& id) {
  remove_shared_.bind_blob(1, std::span<const std::uint8_t>(id.bytes));
  remove_shared_.run();
  remove_identity_.bind_blob(1, std::span<const std::uint8_t>(id.bytes));
  remove_identity_.run();
  put_shared_groups(id, {});
}

void PeerState::add_uploaded(const FileId& id, std::uint64_t bytes) {
  add_uploaded_.bind_blob(1, std::span<const std::uint8_t>(id.bytes)).bind_int(2, static_cast<std::int64_t>(bytes));
  add_uploaded_.run();
}

std::vector<DownloadRecord> PeerState::downloads() {
  auto query = db_.prepare(
      "SELECT name, directory, destination, replace, size, chunk_size, hashes, have, clean, part_size, part_mtime_ns "
      "FROM downloads",
      "load downloads");
  std::vector<DownloadRecord> out;
  while (query.step()) {
    DownloadRecord r;
    r.manifest.name = std::string(query.column_text(0));
    r.directory = std::string(query.column_text(1));
    r.destination = std::string(query.column_text(2));
    r.replace = query.column_int(3) != 0;
    r.manifest.size = static_cast<std::uint64_t>(query.column_int(4));
    r.manifest.chunk_size = static_cast<std::uint32_t>(query.column_int(5));
    r.manifest.chunk_hashes = stored_hashes(query.column_blob(6), r.manifest);
    const auto have = query.column_blob(7);
    auto bits = Bitfield::from_wire(std::string_view(reinterpret_cast<const char*>(have.data()), have.size()),
                                    r.manifest.chunk_count());
    // Resume state that does not fit the manifest is not trusted at all.
    r.have = bits ? *bits : Bitfield(r.manifest.chunk_count());
    r.clean = bits && query.column_int(8) != 0;
    r.stamp = {static_cast<std::uint64_t>(query.column_int(9)), query.column_int(10)};
    out.push_back(std::move(r));
  }
  return out;
}

void PeerState::put_download(const DownloadRecord& r, const Manifest& manifest) {
  const FileId id = manifest.file_id();
  put_download_.bind_blob(1, std::span<const std::uint8_t>(id.bytes))
      .bind_text(2, manifest.name)
      .bind_text(3, r.directory.string())
      .bind_text(4, r.destination.string())
      .bind_int(5, r.replace ? 1 : 0)
      .bind_int(6, static_cast<std::int64_t>(manifest.size))
      .bind_int(7, manifest.chunk_size)
      .bind_blob(8, encode_chunk_hashes(manifest.chunk_hashes))
      .bind_blob(9, r.have.to_wire())
      .bind_int(10, r.clean ? 1 : 0)
      .bind_int(11, static_cast<std::int64_t>(r.stamp.size))
      .bind_int(12, r.stamp.mtime_ns);
  put_download_.run();
}

void PeerState::update_resume(const FileId& id, const Bitfield& have, bool clean, const store::FileStamp& stamp) {
  update_resume_.bind_blob(1, std::span<const std::uint8_t>(id.bytes))
      .bind_blob(2, have.to_wire())
      .bind_int(3, clean ? 1 : 0)
      .bind_int(4, static_cast<std::int64_t>(stamp.size))
      .bind_int(5, stamp.mtime_ns);
  update_resume_.run();
}

void PeerState::remove_download(const FileId& id) {
  remove_download_.bind_blob(1, std::span<const std::uint8_t>(id.bytes));
  remove_download_.run();
}

}  // namespace p2pshare::peer
