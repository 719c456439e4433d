// central-server --store postgresql://...: the real binary on the test
// PostgreSQL (the "pg" CTest fixture). Two central servers on one database
// are the "pgmulti" tests' subject; here, one, and the start-up errors.
#include <catch2/catch.hpp>

#include "e2e.hpp"
#include "support/pg.hpp"

using namespace p2pshare::test;

namespace {

RunResult central_with_store(const std::string& store, const TempDir& dir) {
  return run(
      {binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir", (dir / "central").string(), "--store", store},
      dir.path(), std::chrono::seconds(30));
}

// Whether process `pid` has libpq mapped (it is loaded only for a
// PostgreSQL store).
bool maps_libpq(pid_t pid) {
  return read_file(fs::path("/proc") / std::to_string(pid) / "maps").find("/libpq.so.5") != std::string::npos;
}

}  // namespace

TEST_CASE("a central server on PostgreSQL lists a registered file and keeps it across a SIGKILL", "[e2e][pg]") {
  FreshPgDatabase pg;
  ClusterOptions options;
  options.central_args = {"--store", pg.url()};
  Cluster c(1, options);
  const auto src = c.make_file("in-postgres.bin", kChunkSize * 3 + 5, 31);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  const auto entry = c.file_entry(id);
  REQUIRE(entry.is_object());
  CHECK(entry["name"] == "in-postgres.bin");
  // Nothing of the registry is in the data dir: only the key pair.
  CHECK_FALSE(fs::exists(c.central().data_dir / "registry.db"));
  // libpq is loaded by the central server that needs it, and by nobody else.
  CHECK(maps_libpq(c.central().process->pid()));
  CHECK_FALSE(maps_libpq(c.peer(0).process->pid()));

  const std::string addr = c.central_addr();
  Cluster::kill(c.central());
  c.start_central(addr);
  // At once, from the database.
  const auto again = c.file_entry(id);
  REQUIRE(again.is_object());
  CHECK(again["size"] == kChunkSize * 3 + 5);
}

TEST_CASE("central-server --store: a malformed URL exits 2 and an unreachable database exits 1", "[e2e][pg]") {
  TempDir dir;
  check_fails("unknown scheme", central_with_store("mysql://localhost/db", dir), 2, {"--store"});
  check_fails("not a URL libpq takes", central_with_store("postgresql://h/db?bogus=1", dir), 2, {"--store"});
  // A role the server refuses.
  std::string refused = test_pg_url();
  const auto user = refused.find("user=postgres");
  REQUIRE(user != std::string::npos);
  refused.replace(user, 13, "user=nobody_here");
  check_fails("refused role", central_with_store(refused, dir), 1, {"cannot connect", "nobody_here"});
  // Nobody listening.
  check_fails("nobody listening", central_with_store("postgresql://p2pshare@127.0.0.1:1/db", dir), 1,
              {"cannot connect"});
}
