// Where the central server keeps its registry and accounts: one small SQL
// interface with two implementations, SQLite (the embedded default, a file
// in --data-dir) and PostgreSQL (libpq; several central servers on one
// database). Registry and AccountStore write one SQL text for both: `?N`
// placeholders (rewritten to `$N` for PostgreSQL), `INSERT ... ON CONFLICT`,
// `excluded.`, `EXISTS`; the schema steps are written once per dialect
// (BLOB/BYTEA, WITHOUT ROWID, INTEGER PRIMARY KEY/identity).
//
// Every failure throws p2pshare::Error: Errc::io for a statement the store
// refused, Errc::unavailable when the PostgreSQL connection is gone (the
// next begin() reconnects; nothing is lost that was committed).
//
// Threading: a Database and its statements belong to one thread at a time.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "p2pshare/error.hpp"

namespace p2pshare::db {

// The database went away (PostgreSQL stopped or unreachable): the code is
// Errc::unavailable and the message names the store (its URL, password
// hidden), for the log. Servers tell their clients less (central_server.cpp).
class Unavailable : public Error {
 public:
  explicit Unavailable(const std::string& message) : Error(Errc::unavailable, message) {}
};

// One statement's backend-specific state (see Statement).
class StatementImpl {
 public:
  virtual ~StatementImpl() = default;
  virtual void bind_int(int index, std::int64_t value) = 0;
  virtual void bind_text(int index, std::string_view value) = 0;
  virtual void bind_blob(int index, std::span<const std::uint8_t> value) = 0;
  virtual void bind_null(int index) = 0;
  virtual bool step() = 0;
  virtual void run() = 0;
  virtual void reset() noexcept = 0;
  virtual bool column_is_null(int column) const = 0;
  virtual std::int64_t column_int(int column) const = 0;
  virtual std::string_view column_text(int column) const = 0;
  virtual std::span<const std::uint8_t> column_blob(int column) const = 0;
};

// A prepared statement, as sqlite::Statement: bind (indices from 1), then
// step() through the rows (columns from 0; views valid until the next
// step/run/reset) or run() it; either leaves it ready for the next use.
// A boolean column reads as 0/1 with column_int on both stores.
class Statement {
 public:
  Statement() = default;
  explicit Statement(std::unique_ptr<StatementImpl> impl) : impl_(std::move(impl)) {}

  Statement& bind_int(int index, std::int64_t value) {
    impl_->bind_int(index, value);
    return *this;
  }
  Statement& bind_text(int index, std::string_view value) {
    impl_->bind_text(index, value);
    return *this;
  }
  Statement& bind_blob(int index, std::span<const std::uint8_t> value) {
    impl_->bind_blob(index, value);
    return *this;
  }
  Statement& bind_blob(int index, std::string_view value) {
    impl_->bind_blob(index, {reinterpret_cast<const std::uint8_t*>(value.data()), value.size()});
    return *this;
  }
  Statement& bind_null(int index) {
    impl_->bind_null(index);
    return *this;
  }
  bool step() { return impl_->step(); }
  void run() { impl_->run(); }
  void reset() noexcept { impl_->reset(); }
  bool column_is_null(int column) const { return impl_->column_is_null(column); }
  std::int64_t column_int(int column) const { return impl_->column_int(column); }
  std::string_view column_text(int column) const { return impl_->column_text(column); }
  std::span<const std::uint8_t> column_blob(int column) const { return impl_->column_blob(column); }

 private:
  std::unique_ptr<StatementImpl> impl_;
};

enum class Dialect { sqlite, postgresql };

// One schema step in both dialects.
struct Migration {
  std::string_view sqlite;
  std::string_view postgresql;
};

// The --store value, parsed: no connection is made.
struct Location {
  Dialect dialect = Dialect::sqlite;
  std::filesystem::path sqlite_path;  // sqlite: the file
  std::string url;                    // postgresql: the libpq connection URI
};

// `spec`: "sqlite" (the file `file_name` in `data_dir`) or a PostgreSQL URI
// (postgresql://... or postgres://...). Throws Error(Errc::usage) with one
// line for anything else, or a URI libpq cannot parse.
Location parse_location(std::string_view spec, const std::filesystem::path& data_dir, std::string_view file_name);

// The URI with any password replaced by "***", for logs and messages.
std::string redacted(std::string_view url);

class Database {
 public:
  virtual ~Database() = default;
  Database() = default;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  virtual Dialect dialect() const noexcept = 0;
  // For setup only (it prepares the SQL every time).
  virtual void exec(std::string_view sql, std::string_view what) = 0;
  // `what` names the statement in error messages ("insert file").
  virtual Statement prepare(std::string_view sql, std::string_view what) = 0;
  // A transaction: begin takes the write lock on SQLite (BEGIN IMMEDIATE);
  // on PostgreSQL it reconnects first if the connection was lost.
  virtual void begin() = 0;
  virtual void commit() = 0;
  virtual void rollback() noexcept = 0;
  // "registry at /path/registry.db" or "registry at postgresql://...".
  virtual std::string describe() const = 0;
};

// Opens (creating a SQLite file and its directory if missing) and brings
// the schema to the newest step: `steps[v]` takes a store at version v to
// v + 1, each in its own transaction. On PostgreSQL the version is kept in
// the table schema_version, and concurrent openers are serialized by an
// advisory lock, so several central servers may start at once. A store at a
// newer version than `steps` knows: one Error(Errc::io), nothing changed.
// A PostgreSQL server that cannot be reached or refuses the credentials:
// Error(Errc::io) with one line.
std::unique_ptr<Database> open(const Location& location, std::string label, std::span<const Migration> steps);

}  // namespace p2pshare::db
