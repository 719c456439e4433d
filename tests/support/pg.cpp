#include "support/pg.hpp"

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>

namespace p2pshare::test {
namespace {

void run_admin(const std::string& url, const std::string& sql) {
  PgSession(url).exec(sql);
}

}  // namespace

std::string test_pg_url() {
  const char* url = std::getenv("P2PSHARE_TEST_PG");  // NOLINT(concurrency-mt-unsafe): nobody sets it
  if (url == nullptr || *url == '\0') {
    FAIL(
        "this test needs PostgreSQL: P2PSHARE_TEST_PG is not set. Run it through ctest (the \"pg: start\" "
        "fixture starts a throwaway cluster), or start one with tests/pg/cluster.sh start DIR and set "
        "P2PSHARE_TEST_PG to the URL it prints");
  }
  return url;
}

std::string pg_url_with_database(const std::string& url, const std::string& dbname) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string::npos) throw std::invalid_argument("not a postgresql:// URL: " + url);
  const auto authority = scheme_end + 3;
  const auto query = url.find('?', authority);
  auto slash = url.find('/', authority);
  if (slash != std::string::npos && query != std::string::npos && slash > query) slash = std::string::npos;
  const std::string head =
      url.substr(0, slash == std::string::npos ? (query == std::string::npos ? url.size() : query) : slash);
  const std::string tail = query == std::string::npos ? std::string() : url.substr(query);
  return head + "/" + dbname + tail;
}

FreshPgDatabase::FreshPgDatabase() : admin_url_(test_pg_url()) {
  static std::atomic<unsigned> counter{0};
  std::random_device random;
  name_ = "p2pshare_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)) + "_" +
          std::to_string(random() % 1000000);
  run_admin(admin_url_, "CREATE DATABASE " + name_);
  url_ = pg_url_with_database(admin_url_, name_);
}

void FreshPgDatabase::exec(const std::string& sql) const {
  run_admin(url_, sql);
}

void FreshPgDatabase::allow_connections(bool allow) const {
  run_admin(admin_url_, "ALTER DATABASE " + name_ + " ALLOW_CONNECTIONS " + (allow ? "true" : "false"));
}

int FreshPgDatabase::terminate_connections() const {
  return std::stoi(
      PgSession(admin_url_)
          .value("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '" + name_ + "'"));
}

FreshPgDatabase::~FreshPgDatabase() {
  try {
    run_admin(admin_url_, "DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  } catch (const std::exception& error) {
    WARN("could not drop test database " << name_ << ": " << error.what());
  }
}

PgSession::PgSession(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
  if (PQstatus(conn_) != CONNECTION_OK) {
    std::string error = PQerrorMessage(conn_);
    PQfinish(conn_);
    throw std::runtime_error("cannot connect to the test PostgreSQL (" + url + "): " + error);
  }
}

PgSession::~PgSession() {
  PQfinish(conn_);
}

void PgSession::exec(const std::string& sql) {
  PGresult* result = PQexec(conn_, sql.c_str());
  const auto status = PQresultStatus(result);
  const bool ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
  std::string error = ok ? std::string() : std::string(PQerrorMessage(conn_));
  PQclear(result);
  if (!ok) throw std::runtime_error(sql + ": " + error);
}

std::string PgSession::value(const std::string& sql) {
  PGresult* result = PQexec(conn_, sql.c_str());
  if (PQresultStatus(result) != PGRES_TUPLES_OK) {
    std::string error = PQerrorMessage(conn_);
    PQclear(result);
    throw std::runtime_error(sql + ": " + error);
  }
  std::string out = PQntuples(result) > 0 ? std::string(PQgetvalue(result, 0, 0)) : std::string();
  PQclear(result);
  return out;
}

}  // namespace p2pshare::test
