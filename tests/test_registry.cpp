#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <catch2/catch.hpp>

#include "p2pshare/account_store.hpp"
#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/registry.hpp"
#include "p2pshare/sqlite.hpp"
#include "support/pg.hpp"
#include "support/temp_dir.hpp"

using p2pshare::Bitfield;
using p2pshare::ChunkIndex;
using p2pshare::Errc;
using p2pshare::FileId;
using p2pshare::Manifest;
using p2pshare::PeerId;
using p2pshare::central::Forgotten;
using p2pshare::central::Limits;
using p2pshare::central::PeerRecord;
using p2pshare::central::Registry;
using p2pshare::central::SystemClock;
using p2pshare::test::TempDir;
using namespace std::chrono_literals;

namespace {

// The registry's tests run on both stores: a fresh SQLite file in a temp
// dir, or a fresh database on the test PostgreSQL (support/pg.hpp). The same
// location opened twice is the same store (a reopen, a restart).
class TestStore {
 public:
  explicit TestStore(p2pshare::db::Dialect dialect) {
    if (dialect == p2pshare::db::Dialect::sqlite) {
      dir_.emplace();
      location_ = p2pshare::db::parse_location("sqlite", dir_->path(), "registry.db");
    } else {
      pg_.emplace();
      location_ = p2pshare::db::parse_location(pg_->url(), {}, {});
    }
  }
  const p2pshare::db::Location& location() const { return location_; }
  const char* name() const { return pg_ ? "postgresql" : "sqlite"; }

 private:
  std::optional<TempDir> dir_;
  std::optional<p2pshare::test::FreshPgDatabase> pg_;
  p2pshare::db::Location location_;
};

// Runs the rest of the test case once per store.
#define STORE_UNDER_TEST(var)                                                                      \
  const TestStore var(GENERATE(p2pshare::db::Dialect::sqlite, p2pshare::db::Dialect::postgresql)); \
  INFO("store: " << (var).name())

constexpr auto kExpiry = std::chrono::milliseconds(60s);
// Fixed times, never the real clock: expiry tests must not depend on speed.
const SystemClock::time_point kStart(std::chrono::milliseconds(1'700'000'000'000));

PeerId make_peer_id(std::uint8_t n) {
  PeerId id;
  id.bytes[0] = n;
  id.bytes[15] = static_cast<std::uint8_t>(0xa5 ^ n);
  return id;
}

// A manifest of `chunks` chunks whose hashes are distinct for every (seed, i).
Manifest make_manifest(std::uint32_t seed, std::uint32_t chunks = 3, std::string name = "") {
  Manifest manifest;
  manifest.chunk_size = 16384;
  manifest.size = chunks == 0 ? 0 : std::uint64_t{chunks} * manifest.chunk_size - 100;
  for (std::uint32_t i = 0; i < chunks; ++i) {
    p2pshare::Sha256Digest hash;
    for (int b = 0; b < 4; ++b) {
      hash.bytes[b] = static_cast<std::uint8_t>(seed >> (8 * b));
      hash.bytes[4 + b] = static_cast<std::uint8_t>(i >> (8 * b));
    }
    hash.bytes[31] = 0x5a;
    manifest.chunk_hashes.push_back(hash);
  }
  manifest.name = std::move(name);
  return manifest;
}

// The code of the p2pshare::Error `action` throws; nullopt if it throws none.
template <typename Action>
std::optional<Errc> error_code_of(Action&& action, std::string* message = nullptr) {
  try {
    action();
  } catch (const p2pshare::Error& error) {
    if (message != nullptr) *message = error.what();
    return error.code();
  }
  return std::nullopt;
}

std::set<PeerId> ids_of(const std::vector<PeerRecord>& peers) {
  std::set<PeerId> ids;
  for (const auto& peer : peers) ids.insert(peer.id);
  return ids;
}

// Runs `work` in a child process that must die of SIGKILL, like a killed
// server: no destructors, no WAL checkpoint. `work` raises SIGKILL itself
// while its objects are alive; if it returns instead, the value (a step
// number) is the child's exit status and the test fails, naming it.
void run_then_sigkill(const std::function<int()>& work) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child never returns into Catch2.
    try {
      ::_exit(work());
    } catch (...) {
    }
    ::_exit(1);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  INFO("child exit status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
}

}  // namespace

TEST_CASE("registry upserts peers and lists the live ones", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  CHECK(registry.live_peers(std::nullopt, kStart).empty());

  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  registry.upsert_peer(b, "10.0.0.2", 4001, kStart + 1s);
  auto peers = registry.live_peers(std::nullopt, kStart + 2s);
  REQUIRE(peers.size() == 2);
  CHECK(peers[0].id == b);  // most recently seen first
  CHECK(peers[0].host == "10.0.0.2");
  CHECK(peers[0].port == 4001);
  CHECK(peers[0].last_seen == kStart + 1s);
  CHECK(peers[1].id == a);

  // A peer that moves keeps its id and gets the new address.
  registry.upsert_peer(a, "10.0.0.9", 5000, kStart + 3s);
  peers = registry.live_peers(std::nullopt, kStart + 3s);
  REQUIRE(peers.size() == 2);
  CHECK(peers[0].id == a);
  CHECK(peers[0].host == "10.0.0.9");
  CHECK(peers[0].port == 5000);
}

TEST_CASE("registry creates the directory of its SQLite file", "[registry]") {
  TempDir dir;
  { Registry registry(dir / "nested" / "central", kExpiry); }
  CHECK(std::filesystem::exists(dir / "nested" / "central" / "registry.db"));
}

TEST_CASE("registry expires silent peers and touching revives them", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  registry.upsert_peer(b, "10.0.0.2", 4000, kStart);
  const FileId id = registry.announce(a, make_manifest(1, 3, "x"), std::nullopt);
  registry.announce(b, make_manifest(1, 3, "x"), std::nullopt);

  CHECK(registry.touch_peer(b, kStart + 50s));
  CHECK_FALSE(registry.touch_peer(make_peer_id(99), kStart + 50s));  // unknown

  // Exactly `expiry` after the last sighting a peer is no longer live.
  const auto later = kStart + kExpiry;
  CHECK(ids_of(registry.live_peers(std::nullopt, later)) == std::set<PeerId>{b});
  CHECK(ids_of(registry.live_peers(id, later)) == std::set<PeerId>{b});
  auto files = registry.list_files(std::nullopt, 10, later);
  REQUIRE(files.size() == 1);
  CHECK(files[0].live_holders == 1);
  auto details = registry.file(id, later);
  REQUIRE(details);
  REQUIRE(details->live_holders.size() == 1);
  CHECK(details->live_holders[0].peer.id == b);
  CHECK(ids_of(registry.live_peers(std::nullopt, later - 1ms)) == std::set<PeerId>{a, b});

  CHECK(registry.touch_peer(a, later));
  CHECK(ids_of(registry.live_peers(std::nullopt, later)) == std::set<PeerId>{a, b});
  CHECK(registry.list_files(std::nullopt, 10, later)[0].live_holders == 2);
  CHECK(registry.live_peers(std::nullopt, later + 2 * kExpiry).empty());
}

TEST_CASE("registry announces complete and partial holders", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId seeder = make_peer_id(1);
  const PeerId leecher = make_peer_id(2);
  registry.upsert_peer(seeder, "10.0.0.1", 4000, kStart);
  registry.upsert_peer(leecher, "10.0.0.2", 4000, kStart);
  const Manifest manifest = make_manifest(7, 11, "movie.mkv");

  const FileId id = registry.announce(seeder, manifest, std::nullopt);
  CHECK(id == manifest.file_id());
  Bitfield have(11);
  have.set(ChunkIndex{0});
  have.set(ChunkIndex{9});
  CHECK(registry.announce(leecher, manifest, have) == id);
  CHECK(registry.file_count() == 1);

  auto details = registry.file(id, kStart);
  REQUIRE(details);
  CHECK(details->manifest.size == manifest.size);
  CHECK(details->manifest.chunk_size == manifest.chunk_size);
  CHECK(details->manifest.chunk_hashes == manifest.chunk_hashes);
  CHECK(details->manifest.file_id() == id);
  REQUIRE(details->live_holders.size() == 2);
  for (const auto& holder : details->live_holders) {
    if (holder.peer.id == seeder) {
      CHECK_FALSE(holder.partial);
    } else {
      REQUIRE(holder.partial);
      CHECK(holder.partial->to_wire() == have.to_wire());
      CHECK(holder.partial->count() == 2);
    }
  }

  // The leecher finishes: a full bitfield is recorded as a complete holder.
  registry.announce(leecher, manifest, Bitfield(11, true));
  details = registry.file(id, kStart);
  REQUIRE(details);
  for (const auto& holder : details->live_holders) CHECK_FALSE(holder.partial);

  std::string message;
  CHECK(error_code_of([&] { registry.announce(leecher, manifest, Bitfield(12)); }, &message) == Errc::bad_request);
  CHECK_THAT(message, Catch::Contains("12 bits for 11 chunks"));
}

TEST_CASE("registry accumulates names and lists the first", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  registry.upsert_peer(b, "10.0.0.2", 4000, kStart);

  const FileId id = registry.announce(a, make_manifest(3, 2, ""), std::nullopt);
  CHECK(registry.file(id, kStart)->names.empty());
  registry.announce(a, make_manifest(3, 2, "first.iso"), std::nullopt);
  registry.announce(b, make_manifest(3, 2, "second.iso"), std::nullopt);
  registry.announce(b, make_manifest(3, 2, "first.iso"), std::nullopt);  // not repeated

  auto details = registry.file(id, kStart);
  REQUIRE(details);
  CHECK(details->names == std::vector<std::string>{"first.iso", "second.iso"});
  CHECK(details->manifest.name == "first.iso");
  auto files = registry.list_files(std::nullopt, 10, kStart);
  REQUIRE(files.size() == 1);
  CHECK(files[0].name == "first.iso");

  // Names are bounded, whoever keeps inventing them.
  for (int i = 0; i < 40; ++i) {
    registry.announce(a, make_manifest(3, 2, "name-" + std::to_string(i)), std::nullopt);
  }
  details = registry.file(id, kStart);
  REQUIRE(details);
  CHECK(details->names.size() == 16);
  CHECK(details->names.front() == "first.iso");
}

TEST_CASE("registry withdraws a holder but remembers the file", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  registry.upsert_peer(b, "10.0.0.2", 4000, kStart);
  const FileId id = registry.announce(a, make_manifest(5, 4, "f"), std::nullopt);
  registry.announce(b, make_manifest(5, 4, "f"), std::nullopt);

  CHECK(registry.withdraw(a, id));
  CHECK_FALSE(registry.withdraw(a, id));                          // no longer a holder
  CHECK_FALSE(registry.withdraw(a, make_manifest(6).file_id()));  // unknown file
  CHECK(ids_of(registry.live_peers(id, kStart)) == std::set<PeerId>{b});
  CHECK(registry.withdraw(b, id));

  auto files = registry.list_files(std::nullopt, 10, kStart);
  REQUIRE(files.size() == 1);
  CHECK(files[0].id == id);
  CHECK(files[0].live_holders == 0);
  REQUIRE(registry.file(id, kStart));
  CHECK(registry.file(id, kStart)->live_holders.empty());
  CHECK(registry.live_peers(id, kStart).empty());
  CHECK(registry.live_peers(std::nullopt, kStart).size() == 2);  // the peers stay
}

TEST_CASE("registry pages files in id order", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  std::set<FileId> announced;
  for (std::uint32_t i = 0; i < 25; ++i) {
    announced.insert(registry.announce(a, make_manifest(100 + i, 1 + i % 3, "f"), std::nullopt));
  }
  REQUIRE(announced.size() == 25);
  CHECK(registry.file_count() == 25);

  std::vector<FileId> seen;
  std::vector<std::size_t> page_sizes;
  std::optional<FileId> after;
  // Bounded, so a paging bug that repeats a page fails instead of hanging.
  for (int pages = 0; pages < 5; ++pages) {
    const auto page = registry.list_files(after, 10, kStart);
    if (page.empty()) break;
    page_sizes.push_back(page.size());
    for (const auto& file : page) {
      CHECK(file.live_holders == 1);
      seen.push_back(file.id);
    }
    after = page.back().id;
  }
  CHECK(page_sizes == std::vector<std::size_t>{10, 10, 5});
  CHECK(seen == std::vector<FileId>(announced.begin(), announced.end()));  // sorted, complete

  CHECK(registry.list_files(std::nullopt, 0, kStart).empty());
  // `after` need not be a known id: paging resumes at the next one.
  FileId between = seen[3];
  between.bytes[31] ^= 1;
  const auto resumed = registry.list_files(between, 1, kStart);
  REQUIRE(resumed.size() == 1);
  CHECK(resumed[0].id == *std::upper_bound(seen.begin(), seen.end(), between));
}

TEST_CASE("registry keeps everything across a reopen", "[registry]") {
  STORE_UNDER_TEST(store);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  const PeerId gone = make_peer_id(3);
  const Manifest manifest = make_manifest(9, 5, "keep.bin");
  Bitfield have(5);
  have.set(ChunkIndex{2});
  FileId id;
  {
    Registry registry(store.location(), kExpiry);
    registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
    registry.upsert_peer(b, "10.0.0.2", 4001, kStart);
    id = registry.announce(a, manifest, std::nullopt);
    registry.announce(b, make_manifest(9, 5, "other.bin"), have);
    registry.upsert_peer(gone, "10.0.0.3", 4002, kStart);
    registry.announce(gone, manifest, std::nullopt);
    REQUIRE(registry.withdraw(gone, id));
    registry.touch_peer(a, kStart + 10s);
    registry.flush_last_seen();
    registry.touch_peer(b, kStart + 20s);  // the destructor flushes it
  }
  Registry registry(store.location(), kExpiry);
  CHECK(registry.file_count() == 1);
  auto peers = registry.live_peers(std::nullopt, kStart + 30s);
  REQUIRE(peers.size() == 3);
  CHECK(peers[0].id == b);
  CHECK(peers[0].last_seen == kStart + 20s);
  CHECK(peers[0].port == 4001);
  CHECK(peers[1].id == a);
  CHECK(peers[1].last_seen == kStart + 10s);
  CHECK(peers[1].host == "10.0.0.1");

  auto details = registry.file(id, kStart + 30s);
  REQUIRE(details);
  CHECK(details->manifest.chunk_hashes == manifest.chunk_hashes);
  CHECK(details->manifest.size == manifest.size);
  CHECK(details->names == std::vector<std::string>{"keep.bin", "other.bin"});
  CHECK(ids_of(registry.live_peers(id, kStart + 30s)) == std::set<PeerId>{a, b});  // not `gone`
  REQUIRE(details->live_holders.size() == 2);
  for (const auto& holder : details->live_holders) {
    CHECK(holder.partial.has_value() == (holder.peer.id == b));
    if (holder.partial) CHECK(holder.partial->to_wire() == have.to_wire());
  }
  // The reloaded indexes work for further changes too.
  CHECK(registry.withdraw(a, id));
  CHECK(ids_of(registry.live_peers(id, kStart + 30s)) == std::set<PeerId>{b});
}

TEST_CASE("registry survives SIGKILL and loses only unflushed heartbeats", "[registry]") {
  STORE_UNDER_TEST(store);
  const PeerId a = make_peer_id(1);
  const Manifest manifest = make_manifest(11, 2, "crash.bin");
  run_then_sigkill([&] {
    Registry registry(store.location(), kExpiry);
    registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
    registry.announce(a, manifest, std::nullopt);
    registry.touch_peer(a, kStart + 5s);
    registry.flush_last_seen();
    registry.touch_peer(a, kStart + 9s);
    std::raise(SIGKILL);
    return 1;
  });

  Registry registry(store.location(), kExpiry);
  const auto files = registry.list_files(std::nullopt, 10, kStart + 10s);
  REQUIRE(files.size() == 1);
  CHECK(files[0].id == manifest.file_id());
  CHECK(files[0].name == "crash.bin");
  CHECK(files[0].live_holders == 1);
  const auto peers = registry.live_peers(std::nullopt, kStart + 10s);
  REQUIRE(peers.size() == 1);
  // Heartbeats stay in memory until flushed, so the last one is gone.
  CHECK(peers[0].last_seen == kStart + 5s);
}

TEST_CASE("registry group commit: writes are durable from commit(), not before", "[registry]") {
  STORE_UNDER_TEST(store);
  const PeerId a = make_peer_id(1);
  const Manifest committed = make_manifest(21, 2, "committed.bin");
  const Manifest pending = make_manifest(22, 2, "pending.bin");
  run_then_sigkill([&] {
    Registry registry(store.location(), kExpiry);
    if (registry.has_uncommitted()) return 2;
    registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
    registry.announce(a, committed, std::nullopt);
    if (!registry.has_uncommitted()) return 3;
    registry.commit();
    if (registry.has_uncommitted()) return 4;
    registry.announce(a, pending, std::nullopt);
    // Memory already shows it (the server holds its answers until commit).
    if (registry.file_count() != 2) return 5;
    std::raise(SIGKILL);
    return 1;
  });

  Registry registry(store.location(), kExpiry);
  CHECK_FALSE(registry.has_uncommitted());
  const auto files = registry.list_files(std::nullopt, 10, kStart + 1s);
  REQUIRE(files.size() == 1);
  CHECK(files[0].id == committed.file_id());
  CHECK(files[0].live_holders == 1);
  CHECK_FALSE(registry.file(pending.file_id(), kStart + 1s));
}

TEST_CASE("registry: a commit that fails rolls memory back to the last commit", "[registry]") {
  TempDir dir;
  const PeerId a = make_peer_id(1);
  const Manifest kept = make_manifest(31, 2, "kept.bin");
  const Manifest lost = make_manifest(32, 2, "lost.bin");
  const auto wal = dir.path() / "registry.db-wal";
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // Exit codes say which step went wrong; 0 is success.
    try {
      Registry registry(dir.path(), kExpiry);
      registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
      registry.announce(a, kept, std::nullopt);
      registry.commit();
      // No file may grow any more: the next commit cannot append to the WAL,
      // as on a full disk.
      std::signal(SIGXFSZ, SIG_IGN);
      const auto size = static_cast<rlim_t>(std::filesystem::file_size(wal));
      const rlimit limit{size, size};
      if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(10);
      registry.announce(a, lost, std::nullopt);
      if (registry.file_count() != 2) ::_exit(11);
      try {
        registry.commit();
        ::_exit(12);  // it must fail
      } catch (const p2pshare::Error& e) {
        if (e.code() != Errc::io) ::_exit(13);
      }
      if (registry.has_uncommitted()) ::_exit(14);
      if (registry.file_count() != 1) ::_exit(15);  // memory is back at the last commit
      if (registry.file(lost.file_id(), kStart)) ::_exit(16);
      if (!registry.file(kept.file_id(), kStart)) ::_exit(17);
      ::_exit(0);
    } catch (...) {
      ::_exit(1);
    }
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);

  Registry registry(dir.path(), kExpiry);
  CHECK(registry.file(kept.file_id(), kStart));
  CHECK_FALSE(registry.file(lost.file_id(), kStart));
}

TEST_CASE("registry lists a file's holders only", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  const PeerId a = make_peer_id(1);
  const PeerId b = make_peer_id(2);
  const PeerId c = make_peer_id(3);
  for (const PeerId& id : {a, b, c}) registry.upsert_peer(id, "127.0.0.1", 4000, kStart);
  const FileId first = registry.announce(a, make_manifest(20), std::nullopt);
  const FileId second = registry.announce(b, make_manifest(21), std::nullopt);
  registry.announce(c, make_manifest(21), std::nullopt);

  CHECK(ids_of(registry.live_peers(first, kStart)) == std::set<PeerId>{a});
  CHECK(ids_of(registry.live_peers(second, kStart)) == std::set<PeerId>{b, c});
  CHECK(registry.live_peers(make_manifest(22).file_id(), kStart).empty());
  CHECK(registry.live_peers(std::nullopt, kStart).size() == 3);
}

TEST_CASE("registry answers nullopt for an unknown file", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  CHECK_FALSE(registry.file(make_manifest(1).file_id(), kStart));
  registry.upsert_peer(make_peer_id(1), "127.0.0.1", 4000, kStart);
  registry.announce(make_peer_id(1), make_manifest(1), std::nullopt);
  CHECK(registry.file(make_manifest(1).file_id(), kStart));
  CHECK_FALSE(registry.file(make_manifest(2).file_id(), kStart));
}

TEST_CASE("registry refuses an announce from an unknown peer", "[registry]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  std::string message;
  CHECK(error_code_of([&] { registry.announce(make_peer_id(7), make_manifest(1), std::nullopt); }, &message) ==
        Errc::protocol);
  CHECK_THAT(message, Catch::Contains("unknown peer"));
  CHECK(registry.file_count() == 0);  // nothing half-stored
}

TEST_CASE("registry refuses a database from a newer version", "[registry]") {
  TempDir dir;
  { Registry registry(dir.path(), kExpiry); }
  {
    p2pshare::sqlite::Database db(dir / "registry.db", "test");
    CHECK(db.user_version() == 4);
    db.set_user_version(5);
  }
  std::string message;
  CHECK(error_code_of([&] { Registry registry(dir.path(), kExpiry); }, &message) == Errc::io);
  CHECK_THAT(message, Catch::Contains("schema version 5"));
}

TEST_CASE("sqlite transactions roll back unless committed", "[registry][sqlite]") {
  TempDir dir;
  p2pshare::sqlite::Database db(dir / "t.db", "test");
  db.exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", "create table");
  auto insert = db.prepare("INSERT INTO t (k, v) VALUES (?1, ?2)", "insert row");
  auto count = db.prepare("SELECT count(*) FROM t", "count rows");
  const auto rows = [&] {
    REQUIRE(count.step());
    const auto n = count.column_int(0);
    count.reset();
    return n;
  };
  {
    auto transaction = db.transaction();
    insert.bind_int(1, 1).bind_blob(2, std::string_view("\0\1", 2));
    insert.run();
  }  // no commit
  CHECK(rows() == 0);
  {
    auto transaction = db.transaction();
    insert.bind_int(1, 1).bind_null(2);
    insert.run();
    transaction.commit();
  }
  CHECK(rows() == 1);

  std::string message;
  CHECK(error_code_of(
            [&] {
              insert.bind_int(1, 1).bind_null(2);
              insert.run();
            },
            &message) == Errc::io);
  CHECK_THAT(message, Catch::StartsWith("test: insert row failed: UNIQUE constraint failed"));
  // The failed statement was reset and can be used again.
  insert.bind_int(1, 2).bind_blob(2, std::string_view("\0\1", 2));
  insert.run();
  auto read = db.prepare("SELECT v FROM t WHERE k = ?1", "read row");
  read.bind_int(1, 2);
  REQUIRE(read.step());
  const auto blob = read.column_blob(0);
  CHECK(std::string(reinterpret_cast<const char*>(blob.data()), blob.size()) == std::string("\0\1", 2));
  read.reset();
  CHECK(rows() == 2);
}

TEST_CASE("sqlite: the background checkpointer keeps the WAL bounded without the committing thread's help",
          "[registry][sqlite]") {
  TempDir dir;
  const auto path = dir / "t.db";
  p2pshare::sqlite::Database db(path, "test");
  db.exec("PRAGMA journal_mode = WAL", "enable WAL");
  db.exec("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)", "create table");
  auto insert = db.prepare("INSERT INTO t (k, v) VALUES (?1, ?2)", "insert row");
  const std::string value(3000, 'x');  // about one page per row
  constexpr int kPages = 50;
  const auto wal_bytes = [&] {
    std::error_code ec;
    const auto size = std::filesystem::file_size(dir / "t.db-wal", ec);
    return ec ? 0 : size;
  };
  std::uintmax_t largest = 0;
  {
    p2pshare::sqlite::BackgroundCheckpointer checkpointer(db, path, kPages);
    for (int k = 0; k < 2000; ++k) {
      auto transaction = db.transaction();
      insert.bind_int(1, k).bind_blob(2, value);
      insert.run();
      transaction.commit();
      largest = std::max(largest, wal_bytes());
    }
    CHECK(p2pshare::test::wait_for([&] { return checkpointer.checkpoints() > 0; }));
    // This writer never pauses, so the WAL restarts only after a checkpoint
    // between two of its commits (on_commit's valve).
    CHECK(checkpointer.foreground_checkpoints() > 0);
  }
  // Over 2000 pages were written; the WAL was reused from its start instead
  // of growing with them (the hook replaced SQLite's own checkpoint).
  INFO("largest WAL " << largest << " bytes");
  CHECK(largest < 3u * kPages * p2pshare::sqlite::BackgroundCheckpointer::kForegroundFactor * 4096u);
  // Every row is there, from a new connection too.
  p2pshare::sqlite::Database other(path, "other");
  auto count = other.prepare("SELECT count(*) FROM t", "count rows");
  REQUIRE(count.step());
  CHECK(count.column_int(0) == 2000);
}

// --- limits and forgetting ---------------------------------------------------

namespace {

using p2pshare::central::Limits;

Limits small_limits() {
  Limits limits;
  limits.max_files_per_peer = 3;
  limits.max_chunks_per_peer = 1000;
  limits.new_peers_per_minute = 4;
  limits.forget_after = std::chrono::hours(24);
  return limits;
}

}  // namespace

TEST_CASE("registry refuses files past max_files_per_peer and keeps what the peer holds", "[registry][limits]") {
  STORE_UNDER_TEST(store);
  const PeerId greedy = make_peer_id(1);
  const PeerId honest = make_peer_id(2);
  {
    Registry registry(store.location(), kExpiry, small_limits());
    registry.upsert_peer(greedy, "10.0.0.1", 4000, kStart);
    registry.upsert_peer(honest, "10.0.0.2", 4000, kStart);
    for (std::uint32_t i = 0; i < 3; ++i) registry.announce(greedy, make_manifest(i), std::nullopt);

    std::string message;
    CHECK(error_code_of([&] { registry.announce(greedy, make_manifest(3), std::nullopt); }, &message) == Errc::limit);
    CHECK_THAT(message, Catch::Contains("already holds 3 files"));
    CHECK(registry.file_count() == 3);
    // What it holds it may still re-announce and update: not a new file for it.
    Bitfield half(3);
    half.set(ChunkIndex{0});
    CHECK_NOTHROW(registry.announce(greedy, make_manifest(0), half));
    CHECK_NOTHROW(registry.announce(greedy, make_manifest(0), std::nullopt));
    // Another peer's limit is its own, also for a file the first one holds.
    CHECK_NOTHROW(registry.announce(honest, make_manifest(3), std::nullopt));
    CHECK_NOTHROW(registry.announce(honest, make_manifest(0), std::nullopt));
    // A withdrawal makes room.
    CHECK(registry.withdraw(greedy, make_manifest(2).file_id()));
    CHECK_NOTHROW(registry.announce(greedy, make_manifest(4), std::nullopt));
    registry.commit();
  }

  // The count survives a reopen: it is rebuilt from the holders.
  Registry reopened(store.location(), kExpiry, small_limits());
  CHECK(error_code_of([&] { reopened.announce(greedy, make_manifest(5), std::nullopt); }) == Errc::limit);
}

TEST_CASE("registry refuses chunks past max_chunks_per_peer", "[registry][limits]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry, small_limits());
  const PeerId a = make_peer_id(1);
  registry.upsert_peer(a, "10.0.0.1", 4000, kStart);
  registry.announce(a, make_manifest(1, 600), std::nullopt);
  std::string message;
  CHECK(error_code_of([&] { registry.announce(a, make_manifest(2, 401), std::nullopt); }, &message) == Errc::limit);
  CHECK_THAT(message, Catch::Contains("1001 chunks"));
  CHECK(registry.file_count() == 1);
  CHECK_NOTHROW(registry.announce(a, make_manifest(3, 400), std::nullopt));  // exactly at the limit
  CHECK(registry.withdraw(a, make_manifest(1, 600).file_id()));
  CHECK_NOTHROW(registry.announce(a, make_manifest(2, 401), std::nullopt));
}

TEST_CASE("registry limits new identities per address a minute, and known ones re-register freely",
          "[registry][limits]") {
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry, small_limits());  // 4 a minute
  // A burst of 4 from one address, then a refusal that changes nothing.
  for (std::uint8_t i = 1; i <= 4; ++i) registry.upsert_peer(make_peer_id(i), "10.0.0.1", 4000, kStart);
  std::string message;
  CHECK(error_code_of([&] { registry.upsert_peer(make_peer_id(5), "10.0.0.1", 4000, kStart); }, &message) ==
        Errc::unavailable);
  CHECK_THAT(message, Catch::Contains("too many new peer identities from 10.0.0.1"));
  CHECK(registry.peer_count() == 4);
  CHECK(error_code_of([&] { registry.announce(make_peer_id(5), make_manifest(1), std::nullopt); }) == Errc::protocol);

  // Known identities re-register (a reconnect, a restart) at no cost.
  for (int round = 0; round < 10; ++round) {
    CHECK_NOTHROW(registry.upsert_peer(make_peer_id(1), "10.0.0.1", 4000, kStart + 1s));
  }
  // Other addresses have their own buckets; `source` names the bucket.
  CHECK_NOTHROW(registry.upsert_peer(make_peer_id(6), "10.0.0.2", 4000, kStart));
  CHECK_NOTHROW(registry.upsert_peer(make_peer_id(7), "2001:db8::1", 4000, kStart, "2001:db8::/64"));

  // The bucket refills at 4 a minute: one more after 15 s, not before.
  CHECK(error_code_of([&] { registry.upsert_peer(make_peer_id(5), "10.0.0.1", 4000, kStart + 14s); }) ==
        Errc::unavailable);
  CHECK_NOTHROW(registry.upsert_peer(make_peer_id(5), "10.0.0.1", 4000, kStart + 15s));
  CHECK(error_code_of([&] { registry.upsert_peer(make_peer_id(8), "10.0.0.1", 4000, kStart + 16s); }) ==
        Errc::unavailable);
  // A clock stepping back never refills.
  CHECK(error_code_of([&] { registry.upsert_peer(make_peer_id(8), "10.0.0.1", 4000, kStart - 1h); }) ==
        Errc::unavailable);
  // After a minute the burst is whole again.
  for (std::uint8_t i = 10; i < 14; ++i) registry.upsert_peer(make_peer_id(i), "10.0.0.1", 4000, kStart + 80s);
  CHECK(registry.peer_count() == 11);

  Limits unlimited = small_limits();
  unlimited.new_peers_per_minute = 0;
  TempDir other;
  Registry open(other.path(), kExpiry, unlimited);
  for (std::uint8_t i = 1; i <= 100; ++i) open.upsert_peer(make_peer_id(i), "10.0.0.1", 4000, kStart);
  CHECK(open.peer_count() == 100);
}

TEST_CASE("registry forgets peers not seen for forget_after, and files nobody holds", "[registry][forget]") {
  STORE_UNDER_TEST(store);
  const Limits limits = small_limits();  // forget after 24 h
  const PeerId gone = make_peer_id(1);
  const PeerId back = make_peer_id(2);
  const PeerId stays = make_peer_id(3);
  const FileId only_gone = make_manifest(1).file_id();
  const FileId shared = make_manifest(2).file_id();
  const FileId withdrawn = make_manifest(3).file_id();
  {
    Registry registry(store.location(), kExpiry, limits);
    registry.upsert_peer(gone, "10.0.0.1", 4000, kStart);
    registry.upsert_peer(back, "10.0.0.2", 4000, kStart);
    registry.upsert_peer(stays, "10.0.0.3", 4000, kStart);
    registry.announce(gone, make_manifest(1, 3, "only"), std::nullopt);
    registry.announce(gone, make_manifest(2, 3, "shared"), std::nullopt);
    registry.announce(stays, make_manifest(2, 3, "shared"), std::nullopt);
    registry.announce(stays, make_manifest(3, 3, "withdrawn"), std::nullopt);
    registry.touch_peer(stays, kStart + 20h);
    // A withdrawn file is remembered until the next forget_stale, then goes.
    registry.withdraw(stays, withdrawn);
    CHECK(registry.file(withdrawn, kStart + 20h));

    auto forgotten = registry.forget_stale(kStart + 20h, 1000);
    CHECK(forgotten.peers == 0);
    CHECK(forgotten.files == 1);
    CHECK_FALSE(forgotten.more);
    CHECK_FALSE(registry.file(withdrawn, kStart + 20h));
    // The heartbeat of `back` is in memory only; forgetting must use it.
    registry.touch_peer(back, kStart + 23h);

    // Exactly forget_after after its last sighting a peer is forgotten.
    forgotten = registry.forget_stale(kStart + 24h - 1ms, 1000);
    CHECK(forgotten.peers == 0);
    forgotten = registry.forget_stale(kStart + 24h, 1000);
    CHECK(forgotten.peers == 1);
    CHECK(forgotten.files == 1);  // only_gone; shared is still held by stays
    registry.commit();
    CHECK(registry.peer_count() == 2);
    CHECK_FALSE(registry.file(only_gone, kStart + 24h));
    REQUIRE(registry.file(shared, kStart + 24h));
    CHECK(ids_of(registry.live_peers(shared, kStart + 20h)) == std::set<PeerId>{stays});
    // A forgotten peer is unknown: its next heartbeat tells it to register.
    CHECK_FALSE(registry.touch_peer(gone, kStart + 25h));
    CHECK(error_code_of([&] { registry.announce(gone, make_manifest(1), std::nullopt); }) == Errc::protocol);
  }
  // The rows are gone too, not only the memory.
  Registry reopened(store.location(), kExpiry, limits);
  CHECK(reopened.peer_count() == 2);
  CHECK(reopened.file_count() == 1);
  CHECK_FALSE(reopened.file(only_gone, kStart));
  // A peer that comes back after being forgotten registers and announces afresh.
  reopened.upsert_peer(gone, "10.0.0.1", 4000, kStart + 30h);
  CHECK(reopened.announce(gone, make_manifest(1, 3, "only"), std::nullopt) == only_gone);
}

TEST_CASE("registry forgets in bounded steps", "[registry][forget]") {
  STORE_UNDER_TEST(store);
  Limits limits = small_limits();
  limits.new_peers_per_minute = 0;
  limits.max_files_per_peer = 100;
  Registry registry(store.location(), kExpiry, limits);
  for (std::uint8_t i = 1; i <= 30; ++i) {
    registry.upsert_peer(make_peer_id(i), "10.0.0.1", 4000, kStart);
    registry.announce(make_peer_id(i), make_manifest(i), std::nullopt);  // 2 rows each: peer, holder
  }
  registry.commit();
  std::size_t steps = 0;
  std::size_t peers = 0;
  std::size_t files = 0;
  for (bool more = true; more && steps < 100; ++steps) {
    const auto forgotten = registry.forget_stale(kStart + 25h, 10);
    CHECK(forgotten.peers <= 5);
    CHECK(forgotten.files <= 10);
    peers += forgotten.peers;
    files += forgotten.files;
    more = forgotten.more;
    registry.commit();
  }
  CHECK(steps > 3);
  CHECK(peers == 30);
  CHECK(files == 30);
  CHECK(registry.peer_count() == 0);
  CHECK(registry.file_count() == 0);

  // A peer with more holdings than a step may delete loses them over several.
  const PeerId big = make_peer_id(100);
  registry.upsert_peer(big, "10.0.0.1", 4000, kStart);
  for (std::uint32_t i = 0; i < 25; ++i) registry.announce(big, make_manifest(1000 + i), std::nullopt);
  registry.commit();
  auto forgotten = registry.forget_stale(kStart + 25h, 10);
  CHECK(forgotten.peers == 0);
  CHECK(forgotten.more);
  registry.commit();
  std::size_t still_held = 0;
  for (std::uint32_t i = 0; i < 25; ++i) {
    if (!registry.live_peers(make_manifest(1000 + i).file_id(), kStart).empty()) ++still_held;
  }
  CHECK(still_held == 15);
  for (steps = 0; forgotten.more && steps < 100; ++steps) {
    forgotten = registry.forget_stale(kStart + 25h, 10);
    registry.commit();
  }
  CHECK(registry.peer_count() == 0);
  CHECK(registry.file_count() == 0);
}

// --- the shared SQLite helpers -------------------------------------------------

TEST_CASE("sqlite::migrate runs the missing steps and refuses a newer file", "[registry][sqlite]") {
  TempDir dir;
  const std::array<std::string_view, 2> steps = {
      "CREATE TABLE t (k INTEGER PRIMARY KEY)",
      "ALTER TABLE t ADD COLUMN v TEXT NOT NULL DEFAULT 'new'",
  };
  {
    p2pshare::sqlite::Database db(dir / "t.db", "test");
    p2pshare::sqlite::open_schema(db, dir / "t.db", std::span(steps).first(1));  // an older build
    CHECK(db.user_version() == 1);
    db.exec("INSERT INTO t (k) VALUES (7)", "insert");
  }
  {
    p2pshare::sqlite::Database db(dir / "t.db", "test");
    p2pshare::sqlite::open_schema(db, dir / "t.db", steps);
    CHECK(db.user_version() == 2);
    auto row = db.prepare("SELECT k, v FROM t", "select");
    REQUIRE(row.step());
    CHECK(row.column_int(0) == 7);  // kept across the migration
    CHECK(row.column_text(1) == "new");
    row.reset();
    auto mode = db.prepare("PRAGMA journal_mode", "journal mode");
    REQUIRE(mode.step());
    CHECK(mode.column_text(0) == "wal");
  }
  {
    // An older build opening the newer file: one clear error, nothing changed.
    p2pshare::sqlite::Database db(dir / "t.db", "peer state");
    std::string message;
    CHECK(error_code_of([&] { p2pshare::sqlite::open_schema(db, dir / "t.db", std::span(steps).first(1)); },
                        &message) == Errc::io);
    CHECK_THAT(message, Catch::StartsWith("peer state: "));
    CHECK_THAT(message, Catch::Contains("schema version 2, but this build knows versions up to 1"));
    CHECK(db.user_version() == 2);
  }
}

// --- several central servers on one PostgreSQL database -------------------

TEST_CASE("registry: two registries on one PostgreSQL database are one registry after sync", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  Registry a(location, kExpiry);
  Registry b(location, kExpiry);
  REQUIRE(a.shared());
  const PeerId p = make_peer_id(1);
  const PeerId q = make_peer_id(2);
  const Manifest manifest = make_manifest(41, 4, "shared.bin");
  const FileId id = manifest.file_id();

  a.upsert_peer(p, "10.0.0.1", 4000, kStart);
  CHECK(a.announce(p, manifest, std::nullopt) == id);
  a.commit();
  // Memory only changes by sync: B has not read the log yet.
  CHECK_FALSE(b.file(id, kStart));
  CHECK(b.sync() == 2);  // the peer and its holding
  auto details = b.file(id, kStart + 1s);
  REQUIRE(details);
  CHECK(details->manifest.chunk_hashes == manifest.chunk_hashes);
  CHECK(details->names == std::vector<std::string>{"shared.bin"});
  REQUIRE(details->live_holders.size() == 1);
  CHECK(details->live_holders[0].peer.id == p);
  CHECK(details->live_holders[0].peer.host == "10.0.0.1");
  CHECK(b.sync() == 0);  // applied once

  // The other way, with a partial holder and a second name.
  Bitfield have(4);
  have.set(ChunkIndex{1});
  b.upsert_peer(q, "10.0.0.2", 4001, kStart);
  b.announce(q, make_manifest(41, 4, "other-name.bin"), have);
  b.commit();
  CHECK(a.sync() == 2);
  details = a.file(id, kStart + 1s);
  REQUIRE(details);
  CHECK(details->names == std::vector<std::string>{"shared.bin", "other-name.bin"});
  CHECK(ids_of(a.live_peers(id, kStart + 1s)) == std::set<PeerId>{p, q});
  for (const auto& holder : details->live_holders) {
    CHECK(holder.partial.has_value() == (holder.peer.id == q));
  }
  // A's own changes are not applied to A again.
  CHECK(a.sync() == 0);

  // Withdraw through A: gone from B after its sync.
  REQUIRE(a.withdraw(p, id));
  a.commit();
  CHECK(ids_of(b.live_peers(id, kStart + 1s)) == std::set<PeerId>{p, q});
  b.sync();
  CHECK(ids_of(b.live_peers(id, kStart + 1s)) == std::set<PeerId>{q});
  CHECK(b.summary(id, kStart + 1s)->live_holders == 1);

  // A third registry opened now starts from the store and the log's end.
  Registry c(location, kExpiry);
  CHECK(ids_of(c.live_peers(id, kStart + 1s)) == std::set<PeerId>{q});
  CHECK(c.sync() == 0);
}

TEST_CASE("registry: liveness crosses registries by the flushed heartbeats and so does forgetting", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  Limits limits;
  limits.forget_after = 10min;
  Registry a(location, kExpiry, limits);
  Registry b(location, kExpiry, limits);
  const PeerId p = make_peer_id(1);
  const Manifest manifest = make_manifest(51, 2, "alive.bin");
  a.upsert_peer(p, "10.0.0.1", 4000, kStart);
  a.announce(p, manifest, std::nullopt);
  a.commit();
  b.sync();
  const auto later = kStart + kExpiry + 30s;  // past the expiry of kStart
  CHECK(b.live_peers(std::nullopt, later).empty());

  // A heartbeat on A stays in A's memory (no write per heartbeat)...
  REQUIRE(a.touch_peer(p, kStart + kExpiry));
  b.sync();
  CHECK(b.live_peers(std::nullopt, later).empty());
  CHECK(ids_of(a.live_peers(std::nullopt, later)) == std::set<PeerId>{p});
  // ...until A flushes them: then B sees the peer live again.
  a.flush_last_seen();
  CHECK(b.sync() == 1);
  CHECK(ids_of(b.live_peers(std::nullopt, later)) == std::set<PeerId>{p});
  CHECK(b.summary(manifest.file_id(), later)->live_holders == 1);

  // A forgets the silent peer and then the file nobody holds; B follows.
  const auto much_later = kStart + kExpiry + 20min;
  Forgotten forgotten = a.forget_stale(much_later, 1000);
  a.commit();
  CHECK(forgotten.peers == 1);
  std::size_t files = forgotten.files;
  if (files == 0) {
    files = a.forget_stale(much_later, 1000).files;
    a.commit();
  }
  CHECK(files == 1);
  b.sync();
  CHECK(b.peer_count() == 0);
  CHECK(b.file_count() == 0);
  // B's own forgetting then finds nothing to do, and fails on nothing.
  forgotten = b.forget_stale(much_later, 1000);
  b.commit();
  CHECK(forgotten.peers + forgotten.files == 0);
}

TEST_CASE("registry on PostgreSQL: a connection lost mid-batch fails that batch only and the next reconnects",
          "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  Registry registry(location, kExpiry);
  const PeerId p = make_peer_id(1);
  const Manifest kept = make_manifest(61, 2, "kept.bin");
  registry.upsert_peer(p, "10.0.0.1", 4000, kStart);
  registry.announce(p, kept, std::nullopt);
  registry.commit();

  // Idle when the server ends the session (a PostgreSQL restart): the next
  // batch reconnects as it begins and nobody notices.
  REQUIRE(pg.terminate_connections() >= 1);
  const Manifest after_idle = make_manifest(62, 2, "after-idle.bin");
  registry.announce(p, after_idle, std::nullopt);
  registry.commit();

  // Lost in the middle of a batch: that batch is not stored, its commit
  // says unavailable (so its answers would), and the registry stays up.
  const Manifest lost = make_manifest(63, 2, "lost.bin");
  registry.announce(p, lost, std::nullopt);
  REQUIRE(registry.has_uncommitted());
  REQUIRE(pg.terminate_connections() >= 1);
  std::string message;
  CHECK(error_code_of([&] { registry.commit(); }, &message) == Errc::unavailable);
  INFO(message);
  CHECK_FALSE(registry.has_uncommitted());
  // Memory is back at the last commit (reloaded over a new connection).
  CHECK_FALSE(registry.file(lost.file_id(), kStart));
  // The retry is stored.
  registry.announce(p, lost, std::nullopt);
  registry.commit();
  Registry reopened(location, kExpiry);
  CHECK(reopened.file_count() == 3);
  CHECK(reopened.file(kept.file_id(), kStart));
  CHECK(reopened.file(after_idle.file_id(), kStart));
  CHECK(reopened.file(lost.file_id(), kStart));
}

TEST_CASE("registry on PostgreSQL: after an outage that outlasted the reload, a change reloads before it looks up",
          "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  Registry registry(location, kExpiry);
  const PeerId p = make_peer_id(1);
  const Manifest kept = make_manifest(71, 2, "kept.bin");
  registry.upsert_peer(p, "10.0.0.1", 4000, kStart);
  registry.announce(p, kept, std::nullopt);
  registry.commit();
  const std::uint64_t abandoned = registry.abandoned_batches();

  // The server goes away with a batch open: the commit fails, and so does
  // the reload that should bring memory back to the last commit.
  const Manifest lost = make_manifest(72, 2, "lost.bin");
  registry.announce(p, lost, std::nullopt);
  REQUIRE(registry.has_uncommitted());
  pg.allow_connections(false);
  REQUIRE(pg.terminate_connections() >= 1);
  std::string message;
  CHECK(error_code_of([&] { registry.commit(); }, &message) == Errc::unavailable);
  INFO(message);
  CHECK(registry.abandoned_batches() == abandoned + 1);
  // Meanwhile a change is refused; no batch was open, so none is abandoned.
  const Manifest after = make_manifest(73, 2, "after.bin");
  CHECK(error_code_of([&] { registry.announce(p, after, std::nullopt); }) == Errc::unavailable);
  CHECK(registry.abandoned_batches() == abandoned + 1);

  // Back: the first change reloads memory (every peer and file is a new
  // object) before it looks up the peer it writes for. It used to look up
  // first and reload in its write, then use the peer it had freed: a
  // heap-use-after-free that the ASan and TSan builds stop at here.
  pg.allow_connections(true);
  CHECK(p2pshare::test::wait_for([&] {
    try {
      registry.announce(p, after, std::nullopt);
      registry.commit();
      return true;
    } catch (const p2pshare::Error& e) {
      if (e.code() != Errc::unavailable) throw;
      return false;
    }
  }));
  CHECK(registry.abandoned_batches() == abandoned + 1);
  // Memory agrees with the store: the lost batch is gone, the peer holds
  // what it announced before and after, and can withdraw it.
  CHECK_FALSE(registry.file(lost.file_id(), kStart));
  const auto found = registry.file(after.file_id(), kStart);
  REQUIRE(found);
  REQUIRE(found->live_holders.size() == 1);
  CHECK(found->live_holders.front().peer.id == p);
  CHECK(registry.withdraw(p, kept.file_id()));
  registry.commit();
  Registry reopened(location, kExpiry);
  CHECK_FALSE(reopened.file(lost.file_id(), kStart));
  CHECK(reopened.file(after.file_id(), kStart));
  const auto withdrawn = reopened.file(kept.file_id(), kStart);
  CHECK((!withdrawn || withdrawn->live_holders.empty()));
}

TEST_CASE("registry on PostgreSQL: sync reconnects by itself after the server ended the session", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  Registry a(location, kExpiry);
  Registry b(location, kExpiry);
  const PeerId p = make_peer_id(1);
  const Manifest manifest = make_manifest(64, 2, "seen.bin");
  REQUIRE(pg.terminate_connections() >= 2);
  a.upsert_peer(p, "10.0.0.1", 4000, kStart);
  a.announce(p, manifest, std::nullopt);
  a.commit();
  // B's first read finds its connection dead; a later one reconnects.
  CHECK(p2pshare::test::wait_for([&] {
    try {
      b.sync();
    } catch (const p2pshare::Error&) {
      return false;
    }
    return b.file(manifest.file_id(), kStart).has_value();
  }));
}

TEST_CASE("db::parse_location takes sqlite or a PostgreSQL URL and gives one usage error for anything else",
          "[registry][pg]") {
  using p2pshare::db::Dialect;
  using p2pshare::db::parse_location;
  const auto sqlite = parse_location("sqlite", "/data", "registry.db");
  CHECK(sqlite.dialect == Dialect::sqlite);
  CHECK(sqlite.sqlite_path == std::filesystem::path("/data/registry.db"));
  CHECK(parse_location("postgresql://u@h:5432/db", "/data", "registry.db").dialect == Dialect::postgresql);
  CHECK(parse_location("postgres:///db?host=/run/pg", "/data", "registry.db").dialect == Dialect::postgresql);
  for (const char* bad : {"mysql://h/db", "", "SQLITE", "postgresql://h/db?nonsense=1", "postgresql://%zz/db"}) {
    INFO(bad);
    std::string message;
    CHECK(error_code_of([&] { (void)parse_location(bad, "/data", "registry.db"); }, &message) == Errc::usage);
    CHECK(message.find('\n') == std::string::npos);
  }
  CHECK(p2pshare::db::redacted("postgresql://u:secret@h/db") == "postgresql://u:***@h/db");
  CHECK(p2pshare::db::redacted("postgresql:///db?user=u&password=secret&host=x") ==
        "postgresql:///db?user=u&password=***&host=x");
}

TEST_CASE("registry refuses a PostgreSQL database from a newer version", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  { Registry registry(location, kExpiry); }
  pg.exec("UPDATE schema_version SET version = version + 1");
  std::string message;
  CHECK(error_code_of([&] { Registry registry(location, kExpiry); }, &message) == Errc::io);
  CHECK_THAT(message, Catch::Contains("schema version 5"));
}

TEST_CASE("registry on PostgreSQL: a role the server refuses is one Errc::io line", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  std::string url = pg.url();
  const auto user = url.find("user=postgres");
  REQUIRE(user != std::string::npos);
  url.replace(user, 13, "user=nobody_here");
  std::string message;
  CHECK(error_code_of([&] { Registry registry(p2pshare::db::parse_location(url, {}, {}), kExpiry); }, &message) ==
        Errc::io);
  CHECK(message.find("cannot connect") != std::string::npos);
  CHECK(message.find('\n') == std::string::npos);
}

TEST_CASE("db::open on PostgreSQL runs each missing step once and refuses a newer database", "[registry][pg]") {
  p2pshare::test::FreshPgDatabase pg;
  const auto location = p2pshare::db::parse_location(pg.url(), {}, {});
  const std::array<p2pshare::db::Migration, 2> steps = {{
      {"CREATE TABLE t (k INTEGER NOT NULL)", "CREATE TABLE t (k BIGINT NOT NULL)"},
      {"ALTER TABLE t ADD COLUMN v TEXT NOT NULL DEFAULT 'new'",
       "ALTER TABLE t ADD COLUMN v TEXT NOT NULL DEFAULT 'new'"},
  }};
  {
    auto db = p2pshare::db::open(location, "test", std::span(steps).first(1));  // an older build
    db->exec("INSERT INTO t (k) VALUES (7)", "insert");
  }
  {
    // Two central servers starting at once: the migration lock runs the
    // step once (a second ALTER TABLE ... ADD COLUMN v would fail).
    std::unique_ptr<p2pshare::db::Database> first;
    std::unique_ptr<p2pshare::db::Database> second;
    std::thread other([&] { first = p2pshare::db::open(location, "test", steps); });
    second = p2pshare::db::open(location, "test", steps);
    other.join();
    REQUIRE(first);
    auto row = second->prepare("SELECT k, v, (SELECT version FROM schema_version) FROM t", "select");
    REQUIRE(row.step());
    CHECK(row.column_int(0) == 7);
    CHECK(row.column_text(1) == "new");
    CHECK(row.column_int(2) == 2);
    row.reset();
  }
  std::string message;
  CHECK(error_code_of([&] { (void)p2pshare::db::open(location, "peer state", std::span(steps).first(1)); }, &message) ==
        Errc::io);
  CHECK_THAT(message, Catch::Contains("schema version 2, but this build knows versions up to 1"));
}

// --- the accounts store, on both stores -----------------------------------

TEST_CASE("account store: users, sessions, groups and private files on each store", "[registry][accounts]") {
  using p2pshare::central::AccountStore;
  using p2pshare::central::User;
  STORE_UNDER_TEST(store);
  Registry registry(store.location(), kExpiry);
  AccountStore accounts(registry);

  accounts.create_user("alice", "hash-a", kStart);
  accounts.create_user("bob", "hash-b", kStart);
  registry.commit();
  CHECK(error_code_of([&] { accounts.create_user("alice", "x", kStart); }) == Errc::bad_request);
  const auto found = accounts.password_hash("alice");
  REQUIRE(found);
  CHECK(found->second == "hash-a");
  const User alice = found->first;
  const User bob = accounts.password_hash("bob")->first;
  CHECK_FALSE(accounts.password_hash("carol"));

  const std::string token = accounts.create_session(alice, kStart);
  registry.commit();
  REQUIRE(accounts.session_user(token));
  CHECK(accounts.session_user(token)->name == "alice");

  accounts.create_group(alice, "team", kStart);
  registry.commit();
  CHECK(error_code_of([&] { accounts.create_group(bob, "team", kStart); }) == Errc::bad_request);
  accounts.request_join(bob, "team", kStart + 1s);
  accounts.request_join(bob, "team", kStart + 2s);  // asking twice is asking once
  registry.commit();
  CHECK(accounts.requests(alice, "team") == std::vector<std::string>{"bob"});
  CHECK(error_code_of([&] { (void)accounts.requests(bob, "team"); }) == Errc::unauthorized);
  auto groups = accounts.list_groups(bob);
  REQUIRE(groups.size() == 1);
  CHECK(groups[0].owner == "alice");
  CHECK(groups[0].members == 1);
  CHECK_FALSE(groups[0].member);
  CHECK(groups[0].pending);
  accounts.decide(alice, "team", "bob", true, kStart + 3s);
  registry.commit();
  groups = accounts.list_groups(bob);
  CHECK(groups[0].members == 2);
  CHECK(groups[0].member);
  CHECK_FALSE(groups[0].pending);

  const FileId file = make_manifest(71).file_id();
  const std::int64_t team = accounts.require_member(bob, "team");
  accounts.add_file_to_group(file, team);
  accounts.add_file_to_group(file, team);
  registry.commit();
  CHECK(accounts.hidden(file));
  CHECK(accounts.member_groups_of(bob, file) == std::vector<std::string>{"team"});
  CHECK(accounts.group_files(team, std::nullopt, 10) == std::vector<FileId>{file});
  CHECK(accounts.group_files(team, file, 10).empty());
  accounts.mark_public(file);
  accounts.mark_public(file);
  registry.commit();
  CHECK_FALSE(accounts.hidden(file));

  // The owner leaves: the group passes to bob; bob leaves: it is gone.
  accounts.leave(alice, "team");
  registry.commit();
  CHECK(accounts.list_groups(bob)[0].owner == "bob");
  accounts.leave(bob, "team");
  registry.commit();
  CHECK(accounts.list_groups(bob).empty());
  CHECK(error_code_of([&] { (void)accounts.require_member(bob, "team"); }) == Errc::not_found);

  accounts.delete_session(token);
  registry.commit();
  CHECK_FALSE(accounts.session_user(token));
}
