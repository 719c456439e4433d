// db::Database on SQLite: the embedded default, one file in --data-dir,
// in WAL mode with its checkpoints off the committing thread (sqlite.hpp).
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "db_backends.hpp"
#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/sqlite.hpp"

namespace p2pshare::db {
namespace {

class SqliteStatement final : public StatementImpl {
 public:
  explicit SqliteStatement(sqlite::Statement statement) : statement_(std::move(statement)) {}
  void bind_int(int index, std::int64_t value) override { statement_.bind_int(index, value); }
  void bind_text(int index, std::string_view value) override { statement_.bind_text(index, value); }
  void bind_blob(int index, std::span<const std::uint8_t> value) override { statement_.bind_blob(index, value); }
  void bind_null(int index) override { statement_.bind_null(index); }
  bool step() override { return statement_.step(); }
  void run() override { statement_.run(); }
  void reset() noexcept override { statement_.reset(); }
  bool column_is_null(int column) const override { return statement_.column_is_null(column); }
  std::int64_t column_int(int column) const override { return statement_.column_int(column); }
  std::string_view column_text(int column) const override { return statement_.column_text(column); }
  std::span<const std::uint8_t> column_blob(int column) const override { return statement_.column_blob(column); }

 private:
  sqlite::Statement statement_;
};

class SqliteDatabase final : public Database {
 public:
  SqliteDatabase(const std::filesystem::path& path, std::string label, std::span<const Migration> steps)
      : path_(path), db_(open_file(path, std::move(label))) {
    std::vector<std::string_view> sqlite_steps;
    sqlite_steps.reserve(steps.size());
    for (const auto& step : steps) sqlite_steps.push_back(step.sqlite);
    sqlite::open_schema(db_, path_, sqlite_steps);
    checkpointer_ = std::make_unique<sqlite::BackgroundCheckpointer>(db_, path_);
  }
  ~SqliteDatabase() override {
    batch_.reset();
    checkpointer_.reset();  // before the connection it watches
  }
  SqliteDatabase(const SqliteDatabase&) = delete;
  SqliteDatabase& operator=(const SqliteDatabase&) = delete;
  SqliteDatabase(SqliteDatabase&&) = delete;
  SqliteDatabase& operator=(SqliteDatabase&&) = delete;

  Dialect dialect() const noexcept override { return Dialect::sqlite; }
  void exec(std::string_view sql, std::string_view what) override { db_.exec(sql, what); }
  Statement prepare(std::string_view sql, std::string_view what) override {
    return Statement(std::make_unique<SqliteStatement>(db_.prepare(sql, what)));
  }
  void begin() override { batch_.emplace(db_); }
  void commit() override {
    if (!batch_) return;
    batch_->commit();
    batch_.reset();
  }
  void rollback() noexcept override { batch_.reset(); }
  std::string describe() const override { return fmt::format("{} at {}", db_.label(), path_.string()); }

 private:
  static sqlite::Database open_file(const std::filesystem::path& path, std::string label) {
    std::error_code error;
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), error);
    if (error) {
      throw Error(Errc::io,
                  fmt::format("{}: creating {} failed: {}", label, path.parent_path().string(), error.message()));
    }
    return sqlite::Database(path, std::move(label));
  }

  std::filesystem::path path_;
  sqlite::Database db_;
  std::optional<sqlite::Transaction> batch_;
  std::unique_ptr<sqlite::BackgroundCheckpointer> checkpointer_;
};

}  // namespace

std::unique_ptr<Database> open_sqlite(const std::filesystem::path& path, std::string label,
                                      std::span<const Migration> steps) {
  return std::make_unique<SqliteDatabase>(path, std::move(label), steps);
}

}  // namespace p2pshare::db
