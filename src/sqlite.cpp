#include "p2pshare/sqlite.hpp"

#include <sqlite3.h>

#include <utility>

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"

namespace p2pshare::sqlite {
namespace {

std::string message_of(sqlite3* db) {
  return db != nullptr ? sqlite3_errmsg(db) : "out of memory";
}

constexpr int kBusyTimeoutMs = 5000;

bool only_whitespace(const char* begin, const char* end) {
  for (const char* c = begin; c < end; ++c) {
    if (*c != ' ' && *c != '\n' && *c != '\t' && *c != '\r' && *c != ';') return false;
  }
  return true;
}

}  // namespace

// --- Statement -------------------------------------------------------------

Statement::Statement(sqlite3* db, sqlite3_stmt* statement, std::string context)
    : db_(db), statement_(statement), context_(std::move(context)) {}

Statement::~Statement() {
  sqlite3_finalize(statement_);
}

Statement::Statement(Statement&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)),
      statement_(std::exchange(other.statement_, nullptr)),
      context_(std::move(other.context_)) {}

Statement& Statement::operator=(Statement&& other) noexcept {
  if (this != &other) {
    sqlite3_finalize(statement_);
    db_ = std::exchange(other.db_, nullptr);
    statement_ = std::exchange(other.statement_, nullptr);
    context_ = std::move(other.context_);
  }
  return *this;
}

void Statement::fail(std::string_view what) const {
  throw Error(Errc::io, fmt::format("{}{} failed: {}", context_, what, message_of(db_)));
}

void Statement::check_bind(int result, int index) const {
  if (result != SQLITE_OK) fail(fmt::format(" (binding parameter {})", index));
}

Statement& Statement::bind_int(int index, std::int64_t value) {
  check_bind(sqlite3_bind_int64(statement_, index, value), index);
  return *this;
}

Statement& Statement::bind_text(int index, std::string_view value) {
  check_bind(sqlite3_bind_text64(statement_, index, value.data(), value.size(), SQLITE_TRANSIENT, SQLITE_UTF8), index);
  return *this;
}

Statement& Statement::bind_blob(int index, std::span<const std::uint8_t> value) {
  // A null pointer would bind NULL instead of an empty blob.
  static const std::uint8_t empty = 0;
  const void* data = value.empty() ? &empty : value.data();
  check_bind(sqlite3_bind_blob64(statement_, index, data, value.size(), SQLITE_TRANSIENT), index);
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view value) {
  return bind_blob(index, std::span(reinterpret_cast<const std::uint8_t*>(value.data()), value.size()));
}

Statement& Statement::bind_null(int index) {
  check_bind(sqlite3_bind_null(statement_, index), index);
  return *this;
}

bool Statement::step() {
  const int result = sqlite3_step(statement_);
  if (result == SQLITE_ROW) return true;
  if (result == SQLITE_DONE) {
    sqlite3_reset(statement_);
    return false;
  }
  // The message must be read before the reset, which may replace it.
  const std::string message = message_of(db_);
  sqlite3_reset(statement_);
  throw Error(Errc::io, fmt::format("{} failed: {}", context_, message));
}

void Statement::run() {
  while (step()) {
  }
  sqlite3_clear_bindings(statement_);
}

void Statement::reset() noexcept {
  sqlite3_reset(statement_);
  sqlite3_clear_bindings(statement_);
}

bool Statement::column_is_null(int column) const {
  return sqlite3_column_type(statement_, column) == SQLITE_NULL;
}

std::int64_t Statement::column_int(int column) const {
  return sqlite3_column_int64(statement_, column);
}

std::string_view Statement::column_text(int column) const {
  const auto* text = sqlite3_column_text(statement_, column);
  const int length = sqlite3_column_bytes(statement_, column);
  if (text == nullptr) return {};
  return {reinterpret_cast<const char*>(text), static_cast<std::size_t>(length)};
}

std::span<const std::uint8_t> Statement::column_blob(int column) const {
  const auto* blob = static_cast<const std::uint8_t*>(sqlite3_column_blob(statement_, column));
  const int length = sqlite3_column_bytes(statement_, column);
  if (blob == nullptr) return {};
  return {blob, static_cast<std::size_t>(length)};
}

// --- Database --------------------------------------------------------------

Database::Database(const std::filesystem::path& path, std::string label) : label_(std::move(label)) {
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  const int result = sqlite3_open_v2(path.c_str(), &db_, flags, nullptr);
  if (result != SQLITE_OK) {
    const std::string message = message_of(db_);
    sqlite3_close_v2(db_);
    db_ = nullptr;
    throw Error(Errc::io, fmt::format("{}: open {} failed: {}", label_, path.string(), message));
  }
}

Database::~Database() {
  // Statements must be finalized before the connection can really close.
  begin_.reset();
  commit_.reset();
  rollback_.reset();
  // close_v2 defers the close until statements still held elsewhere are
  // finalized, so destruction order between a Database and its users is free.
  sqlite3_close_v2(db_);
}

Database::Database(Database&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)),
      label_(std::move(other.label_)),
      begin_(std::move(other.begin_)),
      commit_(std::move(other.commit_)),
      rollback_(std::move(other.rollback_)) {}

Database& Database::operator=(Database&& other) noexcept {
  if (this != &other) {
    begin_.reset();
    commit_.reset();
    rollback_.reset();
    sqlite3_close_v2(db_);
    db_ = std::exchange(other.db_, nullptr);
    label_ = std::move(other.label_);
    begin_ = std::move(other.begin_);
    commit_ = std::move(other.commit_);
    rollback_ = std::move(other.rollback_);
  }
  return *this;
}

void Database::fail(std::string_view what) const {
  throw Error(Errc::io, fmt::format("{}: {} failed: {}", label_, what, message_of(db_)));
}

void Database::exec(std::string_view sql, std::string_view what) {
  const std::string terminated(sql);  // sqlite3_exec wants a C string
  char* message = nullptr;
  if (sqlite3_exec(db_, terminated.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message != nullptr ? message : message_of(db_);
    sqlite3_free(message);
    throw Error(Errc::io, fmt::format("{}: {} failed: {}", label_, what, text));
  }
}

Statement Database::prepare(std::string_view sql, std::string_view what) {
  sqlite3_stmt* statement = nullptr;
  const char* tail = nullptr;
  // PERSISTENT: these statements live as long as their owner, which tells
  // SQLite not to take them from its short-lived lookaside memory.
  const int result =
      sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &statement, &tail);
  if (result != SQLITE_OK) fail(fmt::format("preparing {}", what));
  if (statement == nullptr || !only_whitespace(tail, sql.data() + sql.size())) {
    sqlite3_finalize(statement);
    throw Error(Errc::io, fmt::format("{}: preparing {} failed: expected exactly one statement", label_, what));
  }
  return Statement(db_, statement, fmt::format("{}: {}", label_, what));
}

Transaction Database::transaction() {
  return Transaction(*this);
}

std::int64_t Database::user_version() {
  Statement query = prepare("PRAGMA user_version", "reading the schema version");
  if (!query.step()) fail("reading the schema version");
  const std::int64_t version = query.column_int(0);
  query.reset();
  return version;
}

void Database::set_user_version(std::int64_t version) {
  // Pragmas take no parameters, so the number is formatted into the SQL.
  exec(fmt::format("PRAGMA user_version = {}", version), "writing the schema version");
}

// --- Opening a store -------------------------------------------------------

void configure_wal(Database& db) {
  // Set first: switching to WAL itself needs a lock another process may hold.
  db.exec(fmt::format("PRAGMA busy_timeout = {}", kBusyTimeoutMs), "setting busy_timeout");
  Statement journal = db.prepare("PRAGMA journal_mode = WAL", "enabling WAL");
  const std::string mode = journal.step() ? std::string(journal.column_text(0)) : "";
  journal.reset();
  // Some file systems (some network ones) cannot do WAL, and SQLite then
  // quietly keeps its rollback journal: say so instead.
  if (mode != "wal") {
    throw Error(Errc::io, fmt::format("{}: enabling WAL failed: journal mode is '{}'", db.label(), mode));
  }
  db.exec("PRAGMA synchronous = NORMAL", "setting synchronous");
  db.exec("PRAGMA foreign_keys = ON", "enabling foreign keys");
}

void migrate(Database& db, const std::filesystem::path& path, std::span<const std::string_view> steps) {
  const auto newest = static_cast<std::int64_t>(steps.size());
  std::int64_t version = db.user_version();
  if (version < 0 || version > newest) {
    throw Error(Errc::io, fmt::format("{}: {} has schema version {}, but this build knows versions up to {}; run a "
                                      "newer p2pshare or use another data directory",
                                      db.label(), path.string(), version, newest));
  }
  for (; version < newest; ++version) {
    // One transaction per step: the version number moves with the schema.
    auto transaction = db.transaction();
    db.exec(steps[static_cast<std::size_t>(version)], fmt::format("migrating the schema to version {}", version + 1));
    db.set_user_version(version + 1);
    transaction.commit();
  }
}

void open_schema(Database& db, const std::filesystem::path& path, std::span<const std::string_view> steps) {
  configure_wal(db);
  migrate(db, path, steps);
}

// --- Transaction -----------------------------------------------------------

Transaction::Transaction(Database& db) : db_(&db) {
  if (!db.begin_) {
    db.begin_ = std::make_unique<Statement>(db.prepare("BEGIN IMMEDIATE", "begin transaction"));
  }
  db.begin_->run();
}

Transaction::Transaction(Transaction&& other) noexcept : db_(std::exchange(other.db_, nullptr)) {}

Transaction::~Transaction() {
  // SQLite rolls back by itself after some errors (a full disk, I/O); then
  // there is nothing left to undo.
  if (db_ == nullptr || sqlite3_get_autocommit(db_->db_) != 0) return;
  try {
    if (!db_->rollback_) {
      db_->rollback_ = std::make_unique<Statement>(db_->prepare("ROLLBACK", "rollback transaction"));
    }
    db_->rollback_->run();
  } catch (...) {
    // A destructor must not throw; if even ROLLBACK fails the connection is
    // unusable and the next statement will report that.
  }
}

void Transaction::commit() {
  if (!db_->commit_) {
    db_->commit_ = std::make_unique<Statement>(db_->prepare("COMMIT", "commit transaction"));
  }
  db_->commit_->run();
  db_ = nullptr;
}

// --- BackgroundCheckpointer --------------------------------------------------

BackgroundCheckpointer::BackgroundCheckpointer(Database& db, const std::filesystem::path& path, int wal_pages)
    : db_(db), wal_pages_(wal_pages) {
  // The checkpointing connection is opened here, so a failure is the caller's.
  auto own = std::make_unique<Database>(path, db.label() + " checkpointer");
  // A new connection knows the file is in WAL mode only once it has read it;
  // until then a checkpoint through it does nothing.
  own->exec("PRAGMA journal_mode = WAL", "opening the WAL");
  thread_ = std::thread([this, own = std::move(own)]() mutable {
    while (true) {
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [this] { return due_ || stop_; });
        if (stop_) return;
        due_ = false;
      }
      int wal_frames = 0;
      int copied = 0;
      const int result =
          sqlite3_wal_checkpoint_v2(own->handle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_frames, &copied);
      // BUSY: another checkpoint is running; the next commit asks again.
      if (result != SQLITE_OK && result != SQLITE_BUSY) {
        log::warn("{}: WAL checkpoint failed: {}", db_.label(), sqlite3_errmsg(own->handle()));
      }
      ++checkpoints_;
    }
  });
  sqlite3_wal_hook(db_.handle(), &BackgroundCheckpointer::on_commit, this);
}

BackgroundCheckpointer::~BackgroundCheckpointer() {
  sqlite3_wal_hook(db_.handle(), nullptr, nullptr);
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
  // Without a hook SQLite would not checkpoint again until the connection
  // closes (which checkpoints); restore the default for the rest of its life.
  sqlite3_wal_autocheckpoint(db_.handle(), wal_pages_);
}

int BackgroundCheckpointer::on_commit(void* self, sqlite3* db, const char* /*name*/, int pages) {
  auto* checkpointer = static_cast<BackgroundCheckpointer*>(self);
  if (pages >= kForegroundFactor * checkpointer->wal_pages_) {
    // The WAL restarts from its start only when a write begins with every
    // frame already copied back; a writer that never pauses never sees that,
    // and the WAL would grow for as long as the load lasts. A checkpoint here,
    // between two writes, lets the next one restart it. Most frames are
    // already copied by the thread, so this one is short.
    sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    ++checkpointer->foreground_checkpoints_;
  } else if (pages >= checkpointer->wal_pages_) {
    {
      std::lock_guard lock(checkpointer->mutex_);
      checkpointer->due_ = true;
    }
    checkpointer->wake_.notify_one();
  }
  return SQLITE_OK;
}

}  // namespace p2pshare::sqlite
