// db::Database on PostgreSQL through libpq. Statements are prepared on
// the server once per connection (PQprepare) and run with binary results;
// blobs go as binary parameters, everything else as text, so the server
// types each parameter from where it is used. A lost connection makes the
// failing call throw Error(Errc::unavailable); the next begin() reconnects.
#include <dlfcn.h>
#include <libpq-fe.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "db_backends.hpp"
#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"

namespace p2pshare::db {
namespace {

// libpq is loaded when a PostgreSQL store is first opened, not linked: every
// other p2pshare process (peer-servers, the commands, a central server on
// SQLite) would otherwise map libpq and the twenty libraries it pulls in
// (Kerberos, LDAP, GnuTLS, ...), about 3.3 MiB of resident memory each.
struct LibPq {
  decltype(&::PQclear) PQclear = nullptr;
  decltype(&::PQcmdStatus) PQcmdStatus = nullptr;
  decltype(&::PQconnectdbParams) PQconnectdbParams = nullptr;
  decltype(&::PQconninfoFree) PQconninfoFree = nullptr;
  decltype(&::PQconninfoParse) PQconninfoParse = nullptr;
  decltype(&::PQerrorMessage) PQerrorMessage = nullptr;
  decltype(&::PQexec) PQexec = nullptr;
  decltype(&::PQexecParams) PQexecParams = nullptr;
  decltype(&::PQexecPrepared) PQexecPrepared = nullptr;
  decltype(&::PQfinish) PQfinish = nullptr;
  decltype(&::PQfreemem) PQfreemem = nullptr;
  decltype(&::PQgetisnull) PQgetisnull = nullptr;
  decltype(&::PQgetlength) PQgetlength = nullptr;
  decltype(&::PQgetvalue) PQgetvalue = nullptr;
  decltype(&::PQntuples) PQntuples = nullptr;
  decltype(&::PQprepare) PQprepare = nullptr;
  decltype(&::PQresultErrorMessage) PQresultErrorMessage = nullptr;
  decltype(&::PQresultStatus) PQresultStatus = nullptr;
  decltype(&::PQsetNoticeProcessor) PQsetNoticeProcessor = nullptr;
  decltype(&::PQstatus) PQstatus = nullptr;
  decltype(&::PQtransactionStatus) PQtransactionStatus = nullptr;
};

template <typename F>
void bind_symbol(void* handle, const char* name, F& function) {
  void* symbol = ::dlsym(handle, name);
  if (symbol == nullptr) {
    throw Error(Errc::unavailable, fmt::format("libpq.so.5 has no {}: is the libpq5 package too old?", name));
  }
  function = reinterpret_cast<F>(symbol);  // NOLINT: dlsym's documented use
}

LibPq load_libpq() {
  void* handle = ::dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    // NOLINTNEXTLINE(concurrency-mt-unsafe): runs inside pq()'s one-time initialisation only
    const char* why = ::dlerror();
    throw Error(Errc::unavailable,
                fmt::format("cannot load PostgreSQL's client library (package libpq5): {}", why ? why : "unknown"));
  }
  LibPq lib;
  bind_symbol(handle, "PQclear", lib.PQclear);
  bind_symbol(handle, "PQcmdStatus", lib.PQcmdStatus);
  bind_symbol(handle, "PQconnectdbParams", lib.PQconnectdbParams);
  bind_symbol(handle, "PQconninfoFree", lib.PQconninfoFree);
  bind_symbol(handle, "PQconninfoParse", lib.PQconninfoParse);
  bind_symbol(handle, "PQerrorMessage", lib.PQerrorMessage);
  bind_symbol(handle, "PQexec", lib.PQexec);
  bind_symbol(handle, "PQexecParams", lib.PQexecParams);
  bind_symbol(handle, "PQexecPrepared", lib.PQexecPrepared);
  bind_symbol(handle, "PQfinish", lib.PQfinish);
  bind_symbol(handle, "PQfreemem", lib.PQfreemem);
  bind_symbol(handle, "PQgetisnull", lib.PQgetisnull);
  bind_symbol(handle, "PQgetlength", lib.PQgetlength);
  bind_symbol(handle, "PQgetvalue", lib.PQgetvalue);
  bind_symbol(handle, "PQntuples", lib.PQntuples);
  bind_symbol(handle, "PQprepare", lib.PQprepare);
  bind_symbol(handle, "PQresultErrorMessage", lib.PQresultErrorMessage);
  bind_symbol(handle, "PQresultStatus", lib.PQresultStatus);
  bind_symbol(handle, "PQsetNoticeProcessor", lib.PQsetNoticeProcessor);
  bind_symbol(handle, "PQstatus", lib.PQstatus);
  bind_symbol(handle, "PQtransactionStatus", lib.PQtransactionStatus);
  return lib;  // the handle stays open for the process's life
}

// Loaded once, on first use; a failed load throws and is tried again next time.
const LibPq& pq() {
  static const LibPq lib = load_libpq();
  return lib;
}

// The same key for every p2pshare registry: serializes schema migrations
// between central servers starting at once on one database.
constexpr std::int64_t kMigrationLock = 0x70327073686172;  // "p2pshar"

std::string first_line(std::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
  const auto newline = text.find('\n');
  return std::string(newline == std::string_view::npos ? text : text.substr(0, newline));
}

// `?N` placeholders (SQLite) to `$N` (PostgreSQL). Our SQL has no `?` in
// string literals.
std::string to_dollar_placeholders(std::string_view sql) {
  std::string out(sql);
  std::replace(out.begin(), out.end(), '?', '$');
  return out;
}

struct ResultDeleter {
  void operator()(PGresult* result) const noexcept { pq().PQclear(result); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

class PgDatabase;

class PgStatement final : public StatementImpl {
 public:
  PgStatement(PgDatabase& db, std::string sql, std::string what);
  ~PgStatement() override;
  PgStatement(const PgStatement&) = delete;
  PgStatement& operator=(const PgStatement&) = delete;
  PgStatement(PgStatement&&) = delete;
  PgStatement& operator=(PgStatement&&) = delete;

  void bind_int(int index, std::int64_t value) override { set(index, std::to_string(value), 0); }
  void bind_text(int index, std::string_view value) override { set(index, std::string(value), 0); }
  void bind_blob(int index, std::span<const std::uint8_t> value) override {
    set(index, std::string(reinterpret_cast<const char*>(value.data()), value.size()), 1);
  }
  void bind_null(int index) override {
    slot(index);
    values_[static_cast<std::size_t>(index - 1)].reset();
  }
  bool step() override;
  void run() override;
  void reset() noexcept override {
    result_.reset();
    row_ = -1;
  }
  bool column_is_null(int column) const override { return pq().PQgetisnull(result_.get(), row_, column) != 0; }
  std::int64_t column_int(int column) const override;
  std::string_view column_text(int column) const override {
    return {pq().PQgetvalue(result_.get(), row_, column),
            static_cast<std::size_t>(pq().PQgetlength(result_.get(), row_, column))};
  }
  std::span<const std::uint8_t> column_blob(int column) const override {
    return {reinterpret_cast<const std::uint8_t*>(pq().PQgetvalue(result_.get(), row_, column)),
            static_cast<std::size_t>(pq().PQgetlength(result_.get(), row_, column))};
  }

 private:
  void slot(int index) {
    if (index < 1 || index > 65535) throw Error(Errc::io, fmt::format("{}: bad parameter index {}", what_, index));
    const auto size = static_cast<std::size_t>(index);
    if (values_.size() < size) {
      values_.resize(size);
      formats_.resize(size, 0);
    }
  }
  void set(int index, std::string value, int format) {
    slot(index);
    values_[static_cast<std::size_t>(index - 1)] = std::move(value);
    formats_[static_cast<std::size_t>(index - 1)] = format;
  }
  void execute();

  PgDatabase& db_;
  std::string sql_;
  std::string what_;
  std::string name_;               // of the server-side prepared statement
  std::uint64_t prepared_on_ = 0;  // the connection generation it was prepared on
  int runs_ = 0;                   // prepared on the server from the second run on
  std::vector<std::optional<std::string>> values_;
  std::vector<int> formats_;
  Result result_;
  int row_ = -1;
};

class PgDatabase final : public Database {
 public:
  PgDatabase(std::string url, std::string label) : url_(std::move(url)), label_(std::move(label)) {
    connect_or_throw(Errc::io);
  }
  ~PgDatabase() override {
    if (conn_ != nullptr) pq().PQfinish(conn_);
  }
  PgDatabase(const PgDatabase&) = delete;
  PgDatabase& operator=(const PgDatabase&) = delete;
  PgDatabase(PgDatabase&&) = delete;
  PgDatabase& operator=(PgDatabase&&) = delete;

  Dialect dialect() const noexcept override { return Dialect::postgresql; }

  void exec(std::string_view sql, std::string_view what) override {
    ensure_connected(what);
    Result result(pq().PQexec(conn_, std::string(sql).c_str()));
    check(result.get(), what);
  }

  Statement prepare(std::string_view sql, std::string_view what) override {
    return Statement(std::make_unique<PgStatement>(*this, to_dollar_placeholders(sql), std::string(what)));
  }

  void begin() override {
    try {
      exec("BEGIN", "begin transaction");
    } catch (const Error& error) {
      // A connection the server closed while idle (a restart) is found
      // dead only now; nothing is written yet, so one retry on a new
      // connection is safe.
      if (error.code() != Errc::unavailable || pq().PQstatus(conn_) == CONNECTION_OK) throw;
      exec("BEGIN", "begin transaction");
    }
    in_transaction_ = true;
  }
  void commit() override {
    in_transaction_ = false;
    check_connected("commit");
    Result result(pq().PQexec(conn_, "COMMIT"));
    check(result.get(), "commit");
    // COMMIT of a transaction that had failed answers ROLLBACK.
    if (std::strcmp(pq().PQcmdStatus(result.get()), "COMMIT") != 0) {
      throw Error(Errc::io, fmt::format("{}: commit failed: the transaction was rolled back", label_));
    }
  }
  void rollback() noexcept override {
    in_transaction_ = false;
    if (conn_ == nullptr || pq().PQstatus(conn_) != CONNECTION_OK) return;
    Result result(pq().PQexec(conn_, "ROLLBACK"));
  }
  std::string describe() const override { return fmt::format("{} at {}", label_, redacted(url_)); }

  void migrate(std::span<const Migration> steps) {
    const auto newest = static_cast<std::int64_t>(steps.size());
    for (;;) {
      // One transaction per step, each under the migration lock, so two
      // central servers starting at once never run a step twice.
      begin();
      try {
        exec(fmt::format("SELECT pg_advisory_xact_lock({})", kMigrationLock), "taking the migration lock");
        exec("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)", "creating schema_version");
        std::int64_t version = 0;
        {
          Result result(pq().PQexec(conn_, "SELECT version FROM schema_version"));
          check(result.get(), "reading the schema version");
          if (pq().PQntuples(result.get()) > 0) {
            const char* text = pq().PQgetvalue(result.get(), 0, 0);
            std::from_chars(text, text + std::strlen(text), version);
          } else {
            exec("INSERT INTO schema_version (version) VALUES (0)", "setting the schema version");
          }
        }
        if (version < 0 || version > newest) {
          throw Error(Errc::io, fmt::format("{}: {} has schema version {}, but this build knows versions up to {}; "
                                            "run a newer p2pshare or use another database",
                                            label_, redacted(url_), version, newest));
        }
        if (version == newest) {
          commit();
          return;
        }
        exec(steps[static_cast<std::size_t>(version)].postgresql,
             fmt::format("migrating the schema to version {}", version + 1));
        exec(fmt::format("UPDATE schema_version SET version = {}", version + 1), "setting the schema version");
        commit();
      } catch (...) {
        rollback();
        throw;
      }
    }
  }

  PGconn* conn() const noexcept { return conn_; }
  std::uint64_t generation() const noexcept { return generation_; }
  std::uint64_t next_statement_number() noexcept { return ++statements_; }
  const std::string& label() const noexcept { return label_; }

  // Outside a transaction a lost connection is replaced (with backoff);
  // inside one, the transaction is lost with it: unavailable.
  void ensure_connected(std::string_view what) {
    if (pq().PQstatus(conn_) == CONNECTION_OK) return;
    if (in_transaction_) check_connected(what);
    reconnect();
  }

  void check_connected(std::string_view what) const {
    if (pq().PQstatus(conn_) != CONNECTION_OK) {
      throw Unavailable(fmt::format("{}: {} failed: the PostgreSQL connection is lost", label_, what));
    }
  }

  // Throws for a failed result: unavailable if the connection went with it.
  void check(const PGresult* result, std::string_view what) const {
    const auto status = pq().PQresultStatus(result);
    if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK) return;
    const bool lost = pq().PQstatus(conn_) != CONNECTION_OK;
    const std::string message =
        first_line(result != nullptr ? pq().PQresultErrorMessage(result) : pq().PQerrorMessage(conn_));
    auto text = fmt::format("{}: {} failed: {}", label_, what, message.empty() ? "no result" : message);
    if (lost) throw Unavailable(text);
    throw Error(Errc::io, text);
  }

 private:
  void connect_or_throw(Errc code) {
    if (conn_ != nullptr) pq().PQfinish(conn_);
    // Deadlines, each unless the URL sets its own (the URL is expanded from
    // dbname, after these, and later keywords win): connecting; a TCP peer
    // that stopped answering (keepalives, tcp_user_timeout; not for unix
    // sockets); and any one statement, a lock wait included. libpq blocks
    // the network thread meanwhile, so these bound how long.
    const std::array<const char*, 8> keywords = {"connect_timeout",
                                                 "keepalives_idle",
                                                 "keepalives_interval",
                                                 "keepalives_count",
                                                 "tcp_user_timeout",
                                                 "options",
                                                 "dbname",
                                                 nullptr};
    const std::array<const char*, 8> values = {"5",          "5",    "2", "3", "10000", "-c statement_timeout=30000",
                                               url_.c_str(), nullptr};
    conn_ = pq().PQconnectdbParams(keywords.data(), values.data(), 1);
    ++generation_;
    if (pq().PQstatus(conn_) != CONNECTION_OK) {
      std::string message =
          fmt::format("{}: cannot connect to {}: {}", label_, redacted(url_), first_line(pq().PQerrorMessage(conn_)));
      // Freed now: a constructor that throws runs no destructor.
      pq().PQfinish(conn_);
      conn_ = nullptr;
      if (code == Errc::unavailable) throw Unavailable(message);
      throw Error(code, message);
    }
    // Notices (e.g. "relation already exists, skipping") are not errors.
    pq().PQsetNoticeProcessor(
        conn_, [](void*, const char*) {}, nullptr);
  }
  void reconnect() {
    // Backoff: every batch (and every sync) would try otherwise, each
    // blocking the network thread for up to connect_timeout.
    const auto now = std::chrono::steady_clock::now();
    if (now < next_attempt_) {
      throw Unavailable(fmt::format("{}: PostgreSQL at {} is unreachable; retrying", label_, redacted(url_)));
    }
    log::warn("{}: reconnecting to {}", label_, redacted(url_));
    try {
      connect_or_throw(Errc::unavailable);
    } catch (...) {
      backoff_ = std::min(std::max(backoff_ * 2, kFirstBackoff), kMaxBackoff);
      next_attempt_ = std::chrono::steady_clock::now() + backoff_;
      throw;
    }
    backoff_ = {};
    log::info("{}: reconnected", label_);
  }

  static constexpr std::chrono::milliseconds kFirstBackoff{100};
  static constexpr std::chrono::milliseconds kMaxBackoff{5000};

  std::string url_;
  std::string label_;
  PGconn* conn_ = nullptr;
  bool in_transaction_ = false;
  std::chrono::milliseconds backoff_{};
  std::chrono::steady_clock::time_point next_attempt_{};
  std::uint64_t generation_ = 0;
  std::uint64_t statements_ = 0;
};

PgStatement::PgStatement(PgDatabase& db, std::string sql, std::string what)
    : db_(db), sql_(std::move(sql)), what_(std::move(what)), name_(fmt::format("s{}", db.next_statement_number())) {}

PgStatement::~PgStatement() {
  // Server-side statements live as long as the session: free this one.
  if (prepared_on_ == db_.generation() && pq().PQstatus(db_.conn()) == CONNECTION_OK &&
      pq().PQtransactionStatus(db_.conn()) == PQTRANS_IDLE) {
    Result result(pq().PQexec(db_.conn(), fmt::format("DEALLOCATE {}", name_).c_str()));
  }
}

void PgStatement::execute() {
  result_.reset();
  row_ = -1;
  db_.ensure_connected(what_);
  std::vector<const char*> values(values_.size());
  std::vector<int> lengths(values_.size());
  for (std::size_t i = 0; i < values_.size(); ++i) {
    values[i] = values_[i] ? values_[i]->data() : nullptr;
    lengths[i] = values_[i] ? static_cast<int>(values_[i]->size()) : 0;
  }
  const int count = static_cast<int>(values.size());
  // A statement run once (most of the accounts store's) is not worth a
  // server-side name; one kept and run again is prepared once per connection.
  if (++runs_ == 1) {
    result_.reset(
        pq().PQexecParams(db_.conn(), sql_.c_str(), count, nullptr, values.data(), lengths.data(), formats_.data(), 1));
  } else {
    if (prepared_on_ != db_.generation()) {
      Result prepared(pq().PQprepare(db_.conn(), name_.c_str(), sql_.c_str(), 0, nullptr));
      db_.check(prepared.get(), what_);
      prepared_on_ = db_.generation();
    }
    result_.reset(
        pq().PQexecPrepared(db_.conn(), name_.c_str(), count, values.data(), lengths.data(), formats_.data(), 1));
  }
  try {
    db_.check(result_.get(), what_);
  } catch (...) {
    result_.reset();
    throw;
  }
}

bool PgStatement::step() {
  if (!result_) execute();
  ++row_;
  if (row_ < pq().PQntuples(result_.get())) return true;
  reset();
  return false;
}

void PgStatement::run() {
  execute();
  reset();
}

std::int64_t PgStatement::column_int(int column) const {
  // Binary results: integers in network order, 1 (bool), 2, 4 or 8 bytes.
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(pq().PQgetvalue(result_.get(), row_, column));
  const int length = pq().PQgetlength(result_.get(), row_, column);
  if (length != 1 && length != 2 && length != 4 && length != 8) {
    throw Error(Errc::io, fmt::format("{}: {}: column {} is not an integer", db_.label(), what_, column));
  }
  std::uint64_t value = 0;
  for (int i = 0; i < length; ++i) value = (value << 8U) | bytes[i];
  const unsigned bits = static_cast<unsigned>(length) * 8U;
  if (bits < 64 && (value >> (bits - 1)) != 0) value |= ~std::uint64_t{0} << bits;  // sign-extend
  if (length == 1) value &= 1U;                                                     // bool
  return static_cast<std::int64_t>(value);
}

}  // namespace

std::unique_ptr<Database> open_postgresql(const std::string& url, std::string label, std::span<const Migration> steps) {
  auto db = std::make_unique<PgDatabase>(url, std::move(label));
  db->migrate(steps);
  return db;
}

Location parse_location(std::string_view spec, const std::filesystem::path& data_dir, std::string_view file_name) {
  Location location;
  if (spec == "sqlite") {
    location.dialect = Dialect::sqlite;
    location.sqlite_path = data_dir / file_name;
    return location;
  }
  if (!spec.starts_with("postgresql://") && !spec.starts_with("postgres://")) {
    throw Error(Errc::usage, fmt::format("--store must be sqlite or a postgresql:// URL, not {}", redacted(spec)));
  }
  char* error = nullptr;
  PQconninfoOption* options = pq().PQconninfoParse(std::string(spec).c_str(), &error);
  if (options == nullptr) {
    std::string message = error != nullptr ? first_line(error) : "out of memory";
    pq().PQfreemem(error);
    throw Error(Errc::usage, fmt::format("--store {} is not a valid PostgreSQL URL: {}", redacted(spec), message));
  }
  pq().PQconninfoFree(options);
  location.dialect = Dialect::postgresql;
  location.url = spec;
  return location;
}

std::string redacted(std::string_view url) {
  // scheme://user:password@host...: the password goes; so does a
  // password=... parameter.
  std::string out(url);
  const auto scheme = out.find("://");
  if (scheme != std::string::npos) {
    const auto start = scheme + 3;
    const auto at = out.find('@', start);
    const auto slash = out.find_first_of("/?", start);
    if (at != std::string::npos && (slash == std::string::npos || at < slash)) {
      const auto colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
  }
  const auto password = out.find("password=");
  if (password != std::string::npos) {
    const auto value = password + 9;
    const auto end = out.find('&', value);
    out.replace(value, (end == std::string::npos ? out.size() : end) - value, "***");
  }
  return out;
}

std::unique_ptr<Database> open(const Location& location, std::string label, std::span<const Migration> steps) {
  if (location.dialect == Dialect::sqlite) return open_sqlite(location.sqlite_path, std::move(label), steps);
  return open_postgresql(location.url, std::move(label), steps);
}

}  // namespace p2pshare::db
