// What a peer-server keeps under --data-dir so a restart loses nothing:
// its secret (peer.key), the owner's cookie (control.cookie), and in
// peer.db (SQLite) the files it shares and its unfinished downloads with
// their resume state.
//
// Threading: owned by the network thread; SQLite is called only there.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "p2pshare/bitfield.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/sqlite.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::peer {

struct SharedRecord {
  Manifest manifest;
  std::filesystem::path path;
  std::uint64_t uploaded = 0;
  std::vector<std::string> groups;  // registered in these groups only; empty = public
};

struct DownloadRecord {
  Manifest manifest;
  std::filesystem::path directory;    // where the partial file lives
  std::filesystem::path destination;  // where the finished file goes
  bool replace = false;               // --out given: overwrite what is there
  Bitfield have;                      // chunks verified and synced
  bool clean = false;                 // last stop was orderly and the stamp matches
  store::FileStamp stamp;
};

// Reads or creates the control cookie (0600): 64 lowercase hex digits of 32
// random bytes and a newline, the form the contract gives and the HTTP side's
// bearer token. A cookie from before (32 raw bytes) is rewritten in this form,
// keeping its value. Returns the 64 hex digits.
std::string load_or_create_cookie(const std::filesystem::path& path);

// Replicas (docs/architecture.md, "Replicas and volunteer caches"): the
// target the owner asked for a registered file, and for a volunteer's cache
// copy when it was last fetched or served (the LRU order).
struct ReplicaRecord {
  std::uint32_t replicas = 0;
  bool cached = false;
  std::int64_t last_used_ms = 0;
};

class PeerState {
 public:
  explicit PeerState(const std::filesystem::path& data_dir);

  std::vector<SharedRecord> shared_files();
  void put_shared(const SharedRecord& record);
  void remove_shared(const FileId& id);
  void add_uploaded(const FileId& id, std::uint64_t bytes);

  // Each shared file's identity as it was hashed (registered, or finished
  // downloading): the reference a file that changes under us is caught by.
  std::map<FileId, store::FileIdentity> shared_identities();
  void put_shared_identity(const FileId& id, const store::FileIdentity& identity);

  // The groups a shared file is registered in (put_shared writes them too).
  void put_shared_groups(const FileId& id, const std::vector<std::string>& groups);

  std::map<FileId, ReplicaRecord> replica_records();
  void put_replica_record(const FileId& id, const ReplicaRecord& record);
  void remove_replica_record(const FileId& id);

  std::vector<DownloadRecord> downloads();
  // `manifest` is the download's own (record.manifest may be empty: the
  // swarm keeps the one copy of a hash list that can be megabytes).
  void put_download(const DownloadRecord& record, const Manifest& manifest);
  void update_resume(const FileId& id, const Bitfield& have, bool clean, const store::FileStamp& stamp);
  void remove_download(const FileId& id);

 private:
  sqlite::Database db_;
  void open_identity_table();
  std::map<FileId, std::vector<std::string>> shared_groups();

  sqlite::Statement put_shared_, remove_shared_, add_uploaded_, put_download_, update_resume_, remove_download_;
  sqlite::Statement put_identity_, remove_identity_;
};

}  // namespace p2pshare::peer
