// The central server's accounts: users, sessions, groups, members, pending
// join requests and which files are in which group, in the registry's
// store (SQLite or PostgreSQL; schema version 2) and its group-commit batch.
//
// Nothing is mirrored in memory: every answer is read from the store on the
// same connection, so a rolled-back batch leaves nothing to reload.
//
// Threading: the central server's network thread only (like Registry).
// Password hashing is not done here (see accounts.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "p2pshare/db.hpp"
#include "p2pshare/registry.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::central {

struct User {
  std::int64_t id = 0;
  std::string name;
};

struct GroupInfo {
  std::string name;
  std::string owner;
  std::uint32_t members = 0;
  bool member = false;   // the asking user is a member
  bool pending = false;  // the asking user asked to join
};

class AccountStore {
 public:
  explicit AccountStore(Registry& registry);

  // The stored hash and id of `name`, if the user exists.
  std::optional<std::pair<User, std::string>> password_hash(const std::string& name);
  // Throws Error(bad_request) if the name is taken or breaks the rules.
  void create_user(const std::string& name, const std::string& password_hash, SystemClock::time_point now);
  // A new 32-byte token (raw bytes); only its SHA-256 is stored.
  std::string create_session(const User& user, SystemClock::time_point now);
  std::optional<User> session_user(const std::string& token);
  void delete_session(const std::string& token);

  // Each throws Error(not_found) for an unknown group or user and
  // Error(unauthorized) when `user` may not do it; messages are one line.
  void create_group(const User& user, const std::string& group, SystemClock::time_point now);
  std::vector<GroupInfo> list_groups(const User& user);
  void request_join(const User& user, const std::string& group, SystemClock::time_point now);
  std::vector<std::string> requests(const User& owner, const std::string& group);
  void decide(const User& owner, const std::string& group, const std::string& user, bool accept,
              SystemClock::time_point now);
  // An owner's group passes to its oldest other member, or is deleted.
  void leave(const User& user, const std::string& group);
  // The group's id if `user` is a member; throws as above otherwise.
  std::int64_t require_member(const User& user, const std::string& group);

  void add_file_to_group(const FileId& file, std::int64_t group_id);
  void mark_public(const FileId& file);
  // In a group and never registered publicly: hidden from the public list.
  bool hidden(const FileId& file);
  // The groups of `file` that `user` is a member of.
  std::vector<std::string> member_groups_of(const User& user, const FileId& file);
  // A group's files in id order after `after`, at most `limit`.
  std::vector<FileId> group_files(std::int64_t group_id, std::optional<FileId> after, std::size_t limit);

 private:
  std::int64_t group_id(const std::string& group);
  std::optional<User> user_named(const std::string& name);
  Registry& registry_;
  db::Database& db_;
  db::Statement hidden_;
  db::Statement is_public_;
  db::Statement insert_public_;
  db::Statement insert_file_group_;
};

}  // namespace p2pshare::central
