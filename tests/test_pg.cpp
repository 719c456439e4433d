// The throwaway PostgreSQL the test command starts (tests/pg/cluster.sh) and
// the per-test databases on it (support/pg.hpp).
#include <libpq-fe.h>

#include <catch2/catch.hpp>
#include <string>

#include "support/pg.hpp"

using p2pshare::test::FreshPgDatabase;
using p2pshare::test::pg_url_with_database;

namespace {

bool can_connect(const std::string& url) {
  PGconn* conn = PQconnectdb(url.c_str());
  const bool ok = PQstatus(conn) == CONNECTION_OK;
  PQfinish(conn);
  return ok;
}

}  // namespace

TEST_CASE("pg_url_with_database replaces only the database name", "[pg]") {
  CHECK(pg_url_with_database("postgresql:///postgres?host=/tmp/x&user=postgres", "db1") ==
        "postgresql:///db1?host=/tmp/x&user=postgres");
  CHECK(pg_url_with_database("postgresql://u@h:5/old", "db1") == "postgresql://u@h:5/db1");
  CHECK(pg_url_with_database("postgres://u@h", "db1") == "postgres://u@h/db1");
  CHECK(pg_url_with_database("postgresql://h?user=u", "db1") == "postgresql://h/db1?user=u");
}

TEST_CASE("FreshPgDatabase makes a database of its own and drops it", "[pg]") {
  std::string url;
  {
    FreshPgDatabase db;
    url = db.url();
    REQUIRE(can_connect(url));
    FreshPgDatabase other;
    CHECK(other.name() != db.name());
  }
  CHECK_FALSE(can_connect(url));
}
