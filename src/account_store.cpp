#include "p2pshare/account_store.hpp"

#include <array>

#include <fmt/format.h>

#include "p2pshare/accounts.hpp"
#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"

namespace p2pshare::central {
namespace {

std::int64_t unix_ms(SystemClock::time_point time) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
}

std::string token_hash(const std::string& token) {
  const auto digest = Sha256::digest({reinterpret_cast<const std::uint8_t*>(token.data()), token.size()});
  return to_bytes(digest);
}

void check_name(std::string_view kind, const std::string& name) {
  if (auto error = accounts::name_error(kind, name)) throw Error(Errc::bad_request, *error);
}

}  // namespace

AccountStore::AccountStore(Registry& registry)
    : registry_(registry),
      db_(registry.database()),
      hidden_(db_.prepare("SELECT EXISTS (SELECT 1 FROM file_groups WHERE file_id = ?1) AND NOT EXISTS "
                          "(SELECT 1 FROM public_files WHERE file_id = ?1)",
                          "is the file hidden")),
      // Every announce runs these: prepared once, not per call.
      is_public_(db_.prepare("SELECT 1 FROM public_files WHERE file_id = ?1", "is public")),
      insert_public_(
          db_.prepare("INSERT INTO public_files (file_id) VALUES (?1) ON CONFLICT DO NOTHING", "public file")),
      insert_file_group_(db_.prepare(
          "INSERT INTO file_groups (file_id, group_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING", "file group")) {}

std::optional<User> AccountStore::user_named(const std::string& name) {
  auto row = db_.prepare("SELECT id, name FROM users WHERE name = ?1", "find user");
  row.bind_text(1, name);
  if (!row.step()) return std::nullopt;
  return User{row.column_int(0), std::string(row.column_text(1))};
}

std::optional<std::pair<User, std::string>> AccountStore::password_hash(const std::string& name) {
  auto row = db_.prepare("SELECT id, name, password_hash FROM users WHERE name = ?1", "find user");
  row.bind_text(1, name);
  if (!row.step()) return std::nullopt;
  return std::pair{User{row.column_int(0), std::string(row.column_text(1))}, std::string(row.column_text(2))};
}

void AccountStore::create_user(const std::string& name, const std::string& password_hash, SystemClock::time_point now) {
  check_name("user", name);
  if (user_named(name)) throw Error(Errc::bad_request, fmt::format("user {} already exists", name));
  registry_.write([&] {
    auto insert = db_.prepare("INSERT INTO users (name, password_hash, created_ms) VALUES (?1, ?2, ?3)", "add user");
    insert.bind_text(1, name).bind_text(2, password_hash).bind_int(3, unix_ms(now));
    insert.run();
  });
}

std::string AccountStore::create_session(const User& user, SystemClock::time_point now) {
  std::array<std::uint8_t, 32> raw{};
  random_bytes(raw);
  std::string token(reinterpret_cast<const char*>(raw.data()), raw.size());
  registry_.write([&] {
    auto insert =
        db_.prepare("INSERT INTO sessions (token_hash, user_id, created_ms) VALUES (?1, ?2, ?3)", "add session");
    insert.bind_blob(1, token_hash(token)).bind_int(2, user.id).bind_int(3, unix_ms(now));
    insert.run();
  });
  return token;
}

std::optional<User> AccountStore::session_user(const std::string& token) {
  if (token.size() != 32) return std::nullopt;
  auto row = db_.prepare(
      "SELECT users.id, users.name FROM sessions JOIN users ON users.id = sessions.user_id WHERE token_hash = ?1",
      "find session");
  row.bind_blob(1, token_hash(token));
  if (!row.step()) return std::nullopt;
  return User{row.column_int(0), std::string(row.column_text(1))};
}

void AccountStore::delete_session(const std::string& token) {
  registry_.write([&] {
    auto del = db_.prepare("DELETE FROM sessions WHERE token_hash = ?1", "delete session");
    del.bind_blob(1, token_hash(token));
    del.run();
  });
}

std::int64_t AccountStore::group_id(const std::string& group) {
  check_name("group", group);
  auto row = db_.prepare("SELECT id FROM user_groups WHERE name = ?1", "find group");
  row.bind_text(1, group);
  if (!row.step()) throw Error(Errc::not_found, fmt::format("unknown group {}", group));
  return row.column_int(0);
}

void AccountStore::create_group(const User& user, const std::string& group, SystemClock::time_point now) {
  check_name("group", group);
  auto row = db_.prepare("SELECT 1 FROM user_groups WHERE name = ?1", "find group");
  row.bind_text(1, group);
  if (row.step()) throw Error(Errc::bad_request, fmt::format("group {} already exists", group));
  registry_.write([&] {
    auto insert = db_.prepare("INSERT INTO user_groups (name, owner_id, created_ms) VALUES (?1, ?2, ?3)", "add group");
    insert.bind_text(1, group).bind_int(2, user.id).bind_int(3, unix_ms(now));
    insert.run();
    auto member = db_.prepare(
        "INSERT INTO members (group_id, user_id, joined_ms) SELECT id, CAST(?2 AS BIGINT), CAST(?3 AS BIGINT) "
        "FROM user_groups WHERE name = ?1",
        "add owner");
    member.bind_text(1, group).bind_int(2, user.id).bind_int(3, unix_ms(now));
    member.run();
  });
}

std::vector<GroupInfo> AccountStore::list_groups(const User& user) {
  auto rows = db_.prepare(
      "SELECT g.name, u.name, (SELECT count(*) FROM members m WHERE m.group_id = g.id), "
      "EXISTS (SELECT 1 FROM members m WHERE m.group_id = g.id AND m.user_id = ?1), "
      "EXISTS (SELECT 1 FROM join_requests r WHERE r.group_id = g.id AND r.user_id = ?1) "
      "FROM user_groups g JOIN users u ON u.id = g.owner_id ORDER BY g.name LIMIT 1000",
      "list groups");
  rows.bind_int(1, user.id);
  std::vector<GroupInfo> out;
  while (rows.step()) {
    out.push_back(GroupInfo{std::string(rows.column_text(0)), std::string(rows.column_text(1)),
                            static_cast<std::uint32_t>(rows.column_int(2)), rows.column_int(3) != 0,
                            rows.column_int(4) != 0});
  }
  return out;
}

namespace {
bool is_member(db::Database& db, std::int64_t group, std::int64_t user) {
  auto row = db.prepare("SELECT 1 FROM members WHERE group_id = ?1 AND user_id = ?2", "is member");
  row.bind_int(1, group).bind_int(2, user);
  const bool found = row.step();
  row.reset();
  return found;
}
}  // namespace

void AccountStore::request_join(const User& user, const std::string& group, SystemClock::time_point now) {
  const auto id = group_id(group);
  if (is_member(db_, id, user.id)) throw Error(Errc::bad_request, fmt::format("already a member of {}", group));
  registry_.write([&] {
    auto insert = db_.prepare(
        "INSERT INTO join_requests (group_id, user_id, requested_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        "add request");
    insert.bind_int(1, id).bind_int(2, user.id).bind_int(3, unix_ms(now));
    insert.run();
  });
}

namespace {
std::int64_t require_owner(db::Database& db, std::int64_t group, const User& user, const std::string& name) {
  auto row = db.prepare("SELECT owner_id FROM user_groups WHERE id = ?1", "group owner");
  row.bind_int(1, group);
  if (!row.step() || row.column_int(0) != user.id) {
    throw Error(Errc::unauthorized, fmt::format("not the owner of group {}", name));
  }
  row.reset();
  return group;
}
}  // namespace

std::vector<std::string> AccountStore::requests(const User& owner, const std::string& group) {
  const auto id = require_owner(db_, group_id(group), owner, group);
  auto rows = db_.prepare(
      "SELECT u.name FROM join_requests r JOIN users u ON u.id = r.user_id WHERE r.group_id = ?1 "
      "ORDER BY r.requested_ms, u.name LIMIT 1000",
      "list requests");
  rows.bind_int(1, id);
  std::vector<std::string> out;
  while (rows.step()) out.emplace_back(rows.column_text(0));
  return out;
}

void AccountStore::decide(const User& owner, const std::string& group, const std::string& user, bool accept,
                          SystemClock::time_point now) {
  const auto id = require_owner(db_, group_id(group), owner, group);
  check_name("user", user);
  const auto asker = user_named(user);
  if (!asker) throw Error(Errc::not_found, fmt::format("unknown user {}", user));
  auto row = db_.prepare("SELECT 1 FROM join_requests WHERE group_id = ?1 AND user_id = ?2", "find request");
  row.bind_int(1, id).bind_int(2, asker->id);
  if (!row.step()) throw Error(Errc::not_found, fmt::format("{} has not asked to join {}", user, group));
  row.reset();
  registry_.write([&] {
    auto del = db_.prepare("DELETE FROM join_requests WHERE group_id = ?1 AND user_id = ?2", "delete request");
    del.bind_int(1, id).bind_int(2, asker->id);
    del.run();
    if (accept) {
      auto insert =
          db_.prepare("INSERT INTO members (group_id, user_id, joined_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                      "add member");
      insert.bind_int(1, id).bind_int(2, asker->id).bind_int(3, unix_ms(now));
      insert.run();
    }
  });
}

std::int64_t AccountStore::require_member(const User& user, const std::string& group) {
  const auto id = group_id(group);
  if (!is_member(db_, id, user.id)) throw Error(Errc::unauthorized, fmt::format("not a member of group {}", group));
  return id;
}

void AccountStore::leave(const User& user, const std::string& group) {
  const auto id = require_member(user, group);
  registry_.write([&] {
    auto del = db_.prepare("DELETE FROM members WHERE group_id = ?1 AND user_id = ?2", "delete member");
    del.bind_int(1, id).bind_int(2, user.id);
    del.run();
    auto next = db_.prepare("SELECT user_id FROM members WHERE group_id = ?1 ORDER BY joined_ms, user_id LIMIT 1",
                            "oldest member");
    next.bind_int(1, id);
    if (next.step()) {
      const auto heir = next.column_int(0);
      next.reset();
      auto owner = db_.prepare("UPDATE user_groups SET owner_id = ?2 WHERE id = ?1 AND owner_id = ?3", "pass owner");
      owner.bind_int(1, id).bind_int(2, heir).bind_int(3, user.id);
      owner.run();
      return;
    }
    for (const char* sql : {"DELETE FROM join_requests WHERE group_id = ?1",
                            "DELETE FROM file_groups WHERE group_id = ?1", "DELETE FROM user_groups WHERE id = ?1"}) {
      auto statement = db_.prepare(sql, "delete group");
      statement.bind_int(1, id);
      statement.run();
    }
  });
}

void AccountStore::add_file_to_group(const FileId& file, std::int64_t group) {
  registry_.write([&] {
    insert_file_group_.bind_blob(1, file.bytes).bind_int(2, group);
    insert_file_group_.run();
  });
}

void AccountStore::mark_public(const FileId& file) {
  is_public_.bind_blob(1, file.bytes);
  const bool known = is_public_.step();
  is_public_.reset();
  if (known) return;
  registry_.write([&] {
    insert_public_.bind_blob(1, file.bytes);
    insert_public_.run();
  });
}

bool AccountStore::hidden(const FileId& file) {
  hidden_.bind_blob(1, file.bytes);
  const bool result = hidden_.step() && hidden_.column_int(0) != 0;
  hidden_.reset();
  return result;
}

std::vector<std::string> AccountStore::member_groups_of(const User& user, const FileId& file) {
  auto rows = db_.prepare(
      "SELECT g.name FROM file_groups f JOIN user_groups g ON g.id = f.group_id JOIN members m ON m.group_id = g.id "
      "WHERE f.file_id = ?1 AND m.user_id = ?2 ORDER BY g.name LIMIT 8",
      "member groups of a file");
  rows.bind_blob(1, file.bytes).bind_int(2, user.id);
  std::vector<std::string> out;
  while (rows.step()) out.emplace_back(rows.column_text(0));
  return out;
}

std::vector<FileId> AccountStore::group_files(std::int64_t group, std::optional<FileId> after, std::size_t limit) {
  auto rows = db_.prepare(
      "SELECT file_id FROM file_groups WHERE group_id = ?1 AND file_id > ?2 ORDER BY file_id LIMIT ?3", "group files");
  rows.bind_int(1, group)
      .bind_blob(2, after ? to_bytes(*after) : std::string())
      .bind_int(3, static_cast<std::int64_t>(limit));
  std::vector<FileId> out;
  while (rows.step()) {
    const auto blob = rows.column_blob(0);
    if (auto id = file_id_from_bytes({reinterpret_cast<const char*>(blob.data()), blob.size()})) out.push_back(*id);
  }
  return out;
}

}  // namespace p2pshare::central
