// A fresh PostgreSQL database per test, on the throwaway cluster the test
// command starts (tests/pg/cluster.sh, the "pg: start" CTest fixture), whose
// URL is in the environment variable P2PSHARE_TEST_PG. A test that needs
// PostgreSQL fails with a clear message when the variable is missing: it is
// never skipped silently.
#pragma once

#include <string>

struct pg_conn;

namespace p2pshare::test {

// The cluster's URL (P2PSHARE_TEST_PG); fails the current test when unset.
std::string test_pg_url();

// `url` with its database name replaced by `dbname` (the rest kept as is).
std::string pg_url_with_database(const std::string& url, const std::string& dbname);

class FreshPgDatabase {
 public:
  // CREATE DATABASE with a name unique to this process and object.
  FreshPgDatabase();
  // DROP DATABASE ... WITH (FORCE): connections still open are ended.
  ~FreshPgDatabase();
  FreshPgDatabase(const FreshPgDatabase&) = delete;
  FreshPgDatabase& operator=(const FreshPgDatabase&) = delete;

  const std::string& name() const { return name_; }
  // A postgresql:// URL of the new database.
  const std::string& url() const { return url_; }
  // Ends every session on this database (pg_terminate_backend), as a
  // server restart would: the clients' next statement finds its connection
  // gone. Returns how many were ended.
  int terminate_connections() const;
  // ALTER DATABASE ... ALLOW_CONNECTIONS: with false (and the sessions
  // ended), every new connection is refused until it is true again, as if
  // the server were down; the cluster's other databases go on.
  void allow_connections(bool allow) const;
  // Runs one statement on this database (no rows wanted).
  void exec(const std::string& sql) const;

 private:
  std::string admin_url_;
  std::string name_;
  std::string url_;
};

// A connection of the test's own, kept open: to hold a transaction (and its
// locks) while servers work, or to read what they stored.
class PgSession {
 public:
  explicit PgSession(const std::string& url);
  ~PgSession();
  PgSession(const PgSession&) = delete;
  PgSession& operator=(const PgSession&) = delete;

  // Runs `sql` (one or more statements); throws with the server's message.
  void exec(const std::string& sql);
  // The first column of the first row `sql` returns; "" for no row.
  std::string value(const std::string& sql);

 private:
  pg_conn* conn_ = nullptr;
};

}  // namespace p2pshare::test
