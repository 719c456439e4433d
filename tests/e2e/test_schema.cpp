// Both stores open through the same versioned schema: peer.db is migrated
// from an older version and refused, untouched, from a newer one.
#include <csignal>
#include <filesystem>
#include <memory>

#include <catch2/catch.hpp>

#include "e2e.hpp"
#include "p2pshare/sqlite.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

TEST_CASE("peer.db is migrated from an older version and refused from a newer one", "[e2e][peer][schema]") {
  Cluster c(0);
  const auto start = [&](const std::filesystem::path& dir) {
    return std::make_unique<Process>(
        std::vector<std::string>{binary(), "peer-server", "--central-server-addr", c.central_addr(), "--addr",
                                 "127.0.0.1:0", "--data-dir", dir.string()},
        c.logs());
  };
  const auto old_dir = c.path("old");
  std::filesystem::create_directories(old_dir);
  {
    // A peer.db as builds before versioning left it: the tables, version 0.
    sqlite::Database db(old_dir / "peer.db", "test");
    db.exec(
        "CREATE TABLE shared (file_id BLOB PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, size INTEGER "
        "NOT NULL, chunk_size INTEGER NOT NULL, hashes BLOB NOT NULL, uploaded INTEGER NOT NULL DEFAULT 0)",
        "old schema");
    CHECK(db.user_version() == 0);
  }
  {
    auto peer = start(old_dir);
    peer->wait_listening();
    peer->signal(SIGTERM);
    CHECK(peer->wait() == 0);
  }
  {
    sqlite::Database db(old_dir / "peer.db", "test");
    CHECK(db.user_version() == 1);
  }

  const auto new_dir = c.path("new");
  std::filesystem::create_directories(new_dir);
  {
    sqlite::Database db(new_dir / "peer.db", "test");
    db.set_user_version(99);
  }
  check_fails("peer-server on a newer peer.db",
              c.run({"peer-server", "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0", "--data-dir",
                     new_dir.string()}),
              1, {"peer.db", "schema version 99", "knows versions up to 1"});
  sqlite::Database db(new_dir / "peer.db", "test");
  CHECK(db.user_version() == 99);  // untouched
}
