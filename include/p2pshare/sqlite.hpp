// A thin RAII layer over the SQLite C API: a connection, prepared statements
// and transactions that roll back unless committed. Every failure throws
// p2pshare::Error(Errc::io, "<label>: <what> failed: <sqlite message>"), where
// the label names the database's owner ("registry") and `what` the operation,
// so a log line says which store and which step broke.
//
// Threading: a Database and its statements belong to one thread at a time
// (the connection is opened without SQLite's own mutex).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>

struct sqlite3;
struct sqlite3_stmt;

namespace p2pshare::sqlite {

// A prepared statement, finalized on destruction. Meant to be prepared once
// and kept: bind, step (or run), and it is reset for the next use.
//
// Bind indices start at 1 and column indices at 0, as in SQLite itself.
// Bound text and blobs are copied, so the caller's buffers may go away.
class Statement {
 public:
  Statement() = default;
  ~Statement();
  Statement(Statement&& other) noexcept;
  Statement& operator=(Statement&& other) noexcept;
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind_int(int index, std::int64_t value);
  Statement& bind_text(int index, std::string_view value);
  Statement& bind_blob(int index, std::span<const std::uint8_t> value);
  Statement& bind_blob(int index, std::string_view value);
  Statement& bind_null(int index);

  // Advances to the next row: true if there is one. At the end (or on an
  // error) the statement is reset, so it does not keep a read transaction
  // open; its bindings stay until reset().
  bool step();
  // Runs a statement that returns no rows we need (INSERT, UPDATE, ...) to
  // completion and resets it, also when it fails.
  void run();
  // Stops an unfinished query and clears the bindings.
  void reset() noexcept;

  // Column values of the current row. Views stay valid until the next
  // step(), run() or reset().
  bool column_is_null(int column) const;
  std::int64_t column_int(int column) const;
  std::string_view column_text(int column) const;
  std::span<const std::uint8_t> column_blob(int column) const;

 private:
  friend class Database;
  Statement(sqlite3* db, sqlite3_stmt* statement, std::string context);
  [[noreturn]] void fail(std::string_view what) const;
  void check_bind(int result, int index) const;

  sqlite3* db_ = nullptr;
  sqlite3_stmt* statement_ = nullptr;
  std::string context_;  // "<label>: <what>", the prefix of its error messages
};

class Transaction;

// One connection. The file is created if missing (its directory is not).
class Database {
 public:
  Database(const std::filesystem::path& path, std::string label);
  ~Database();
  Database(Database&& other) noexcept;
  Database& operator=(Database&& other) noexcept;
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Runs one or more statements, discarding any rows. For setup and pragmas,
  // not for hot paths: it prepares the SQL every time.
  void exec(std::string_view sql, std::string_view what);
  // `what` names the statement in error messages ("insert file").
  Statement prepare(std::string_view sql, std::string_view what);
  // BEGIN IMMEDIATE: takes the write lock up front, so a transaction never
  // fails halfway through on a lock upgrade.
  Transaction transaction();

  // The schema version kept in the file header (PRAGMA user_version).
  std::int64_t user_version();
  void set_user_version(std::int64_t version);

  sqlite3* handle() const noexcept { return db_; }
  const std::string& label() const noexcept { return label_; }

 private:
  friend class Transaction;
  [[noreturn]] void fail(std::string_view what) const;

  sqlite3* db_ = nullptr;
  std::string label_;
  // Prepared on first use and kept, like any other hot statement.
  std::unique_ptr<Statement> begin_;
  std::unique_ptr<Statement> commit_;
  std::unique_ptr<Statement> rollback_;
};

// Rolls back on destruction unless commit() succeeded, so an exception
// between BEGIN and COMMIT leaves the database as it was.
class Transaction {
 public:
  explicit Transaction(Database& db);
  ~Transaction();
  Transaction(Transaction&& other) noexcept;
  Transaction& operator=(Transaction&&) = delete;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  void commit();

 private:
  Database* db_;
};

// What every store of ours does on open, so the registry and peer.db behave
// alike: waits up to 5 s for another process's lock, runs in WAL with
// synchronous=NORMAL (a commit is in the WAL before it returns, without an
// fsync; only a power loss can undo the last commits) and enforces foreign
// keys. Throws Error(Errc::io) if the file system cannot do WAL: the
// durability above depends on it.
void configure_wal(Database& db);

// Brings the schema to the newest version: `steps[v]` takes a database at
// version v (PRAGMA user_version; a new file is at 0) to v + 1, each in its
// own transaction with its version number. Append a step for every schema
// change; never edit a released one. A version above steps.size() was
// written by a newer p2pshare: one Error(Errc::io) that names `path`, both
// versions and what to do, and nothing is changed.
void migrate(Database& db, const std::filesystem::path& path, std::span<const std::string_view> steps);

// configure_wal, then migrate: how each store opens its file.
void open_schema(Database& db, const std::filesystem::path& path, std::span<const std::string_view> steps);

// Takes WAL checkpoints, and the fsyncs they do, off the thread that commits.
// It replaces the connection's automatic checkpoint (which runs inside the
// COMMIT that crosses the threshold, stalling that thread for an fsync) with
// a WAL hook that only wakes a thread of its own; that thread checkpoints
// through a second connection in PASSIVE mode, which never blocks the writer.
// The WAL is synced at each checkpoint, as before: durability is unchanged.
// Destroy it before the Database it watches.
class BackgroundCheckpointer {
 public:
  // `wal_pages`: checkpoint once a commit leaves at least this many pages in
  // the WAL (SQLite's own default is 1000).
  BackgroundCheckpointer(Database& db, const std::filesystem::path& path, int wal_pages = 1000);
  ~BackgroundCheckpointer();
  BackgroundCheckpointer(const BackgroundCheckpointer&) = delete;
  BackgroundCheckpointer& operator=(const BackgroundCheckpointer&) = delete;

  // Checkpoints run so far by the thread, and by the committing thread once
  // the WAL passed kForegroundFactor x wal_pages (see on_commit).
  std::uint64_t checkpoints() const noexcept { return checkpoints_.load(); }
  std::uint64_t foreground_checkpoints() const noexcept { return foreground_checkpoints_.load(); }
  static constexpr int kForegroundFactor = 8;

 private:
  static int on_commit(void* self, sqlite3* db, const char* name, int pages);

  Database& db_;
  int wal_pages_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool due_ = false;
  bool stop_ = false;
  std::atomic<std::uint64_t> checkpoints_{0};
  std::atomic<std::uint64_t> foreground_checkpoints_{0};
  std::thread thread_;
};

}  // namespace p2pshare::sqlite
