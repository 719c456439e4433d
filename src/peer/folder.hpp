// peer-server --share-dir: every regular file under each folder is shared,
// and kept so as it changes. One inotify descriptor for all folders, read
// through an Asio stream_descriptor on the network thread (no polling);
// stat'ing and hashing go to the disk pool, one job at a time, in bounded
// batches, so a thousand files dropped at once never stall the network
// thread or crowd out the transfers' disk jobs.
//
// A changed path is looked at once it has been quiet for kQuiet (kUnclosed
// when it was written and not yet closed). Its identity (device, inode,
// size, mtime, ctime) decides:
// - the one recorded for it: unchanged, nothing to do (after a restart too:
//   the record is peer.db's shared_identity, so nothing is hashed again);
// - the same inode, size and mtime as a file recorded at a path that no
//   longer holds it: a rename, the id moves with it, no hashing;
// - anything else: hashed; the identity is checked again after hashing, and
//   a file that moved meanwhile (still being written) is not announced, it
//   is looked at again once quiet. The old id of the path is withdrawn first.
// Gone, moved out, a symlink, a special or unreadable file: withdrawn or
// skipped (one log line per skipped path). A queue overflow rescans all.
//
// Threading: network thread only, but for the disk jobs, which get copies.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include <asio.hpp>

#include "p2pshare/manifest.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::peer {

// What the peer-server does for its folders (all on the network thread).
struct FolderHost {
  // Share the file at `path` as the manifest says (hashed just now).
  std::function<void(const std::filesystem::path& path, Manifest manifest, const store::FileIdentity& identity)> share;
  // `id` at `path` is gone or changed: withdraw it (if still shared from there).
  std::function<void(const FileId& id, const std::filesystem::path& path)> unshare;
  // The same bytes are now at `path` (renamed, or only their ctime moved):
  // shared from there without hashing. False if `id` is not shared any more.
  std::function<bool(const FileId& id, const std::filesystem::path& path, const store::FileIdentity& identity)> moved;
};

// A file shared from a folder, as it was when hashed.
struct KnownFile {
  FileId id;
  std::optional<store::FileIdentity> identity;
};

struct FolderStatus {
  std::filesystem::path path;
  std::uint32_t files = 0;
  std::uint32_t pending = 0;
  std::uint32_t skipped = 0;
  std::uint64_t hashed = 0;
  std::uint64_t reused = 0;
};

class FolderWatcher : public std::enable_shared_from_this<FolderWatcher> {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kQuiet = std::chrono::milliseconds(1000);
  static constexpr auto kUnclosed = std::chrono::seconds(30);

  // `folders` must exist (absolute, canonical).
  FolderWatcher(asio::io_context& io, asio::thread_pool& disk, std::vector<std::filesystem::path> folders,
                FolderHost host);
  // `known`: the files shared from these folders at the last run (peer.db).
  // Watches every folder and queues every file in it. Throws Error(io) when
  // inotify cannot be set up.
  void start(const std::map<std::filesystem::path, KnownFile>& known);
  void stop();

  std::vector<FolderStatus> status() const;
  // The --share-dir `path` lies under, if any.
  std::optional<std::filesystem::path> folder_of(const std::filesystem::path& path) const;
  // Something else found the file at `path` changed (a failed read): look at it soon.
  void touch(const std::filesystem::path& path);
  // stop-sharing: the file is forgotten until it changes again (or the next start).
  void forget(const std::filesystem::path& path);

 private:
  struct Pending {
    Clock::time_point last;
    bool writing = false;
  };
  struct Folder {
    std::filesystem::path root;
    std::uint32_t skipped = 0;
    std::uint64_t hashed = 0;
    std::uint64_t reused = 0;
  };
  enum class Kind { gone, regular, symlink_out, symlink_in, special, unreadable };
  struct Examined {
    std::filesystem::path path;
    Kind kind = Kind::gone;
    std::optional<store::FileIdentity> identity;
  };
  struct Hashed {
    std::filesystem::path path;
    std::optional<Manifest> manifest;  // nullopt: changed while hashed, or unreadable
    store::FileIdentity identity;
    std::string error;
  };

  void read_events();
  void on_events(std::size_t bytes);
  void on_event(int wd, std::uint32_t mask, const std::string& name);
  void add_watch(const std::filesystem::path& dir);
  void drop_watches_under(const std::filesystem::path& dir);
  // Watches `dir` and everything under it, and queues its files.
  void walk(const std::filesystem::path& dir, bool immediate);
  void rescan();
  void mark(const std::filesystem::path& path, bool writing, bool immediate = false);
  void next();
  void arm_timer(Clock::time_point when);
  void examine(std::vector<std::pair<std::filesystem::path, std::filesystem::path>> batch);
  void on_examined(std::vector<Examined> results);
  void hash_batch();
  void on_hashed(std::vector<Hashed> results);
  void skip(const std::filesystem::path& path, const std::string& why);
  Folder* folder_for(const std::filesystem::path& path);
  const Folder* folder_for(const std::filesystem::path& path) const;
  void forget_known(const std::filesystem::path& path);
  void remember(const std::filesystem::path& path, const KnownFile& file);

  asio::io_context& io_;
  asio::thread_pool& disk_;
  FolderHost host_;
  std::vector<Folder> folders_;
  int fd_ = -1;
  std::unique_ptr<asio::posix::stream_descriptor> stream_;
  std::vector<char> buffer_;
  std::unordered_map<int, std::filesystem::path> watches_;
  std::map<std::filesystem::path, KnownFile> known_;
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::filesystem::path> by_inode_;
  std::map<std::filesystem::path, Pending> pending_;
  std::deque<std::filesystem::path> to_hash_;
  std::set<std::filesystem::path> skipped_;  // logged once each
  asio::steady_timer timer_;
  std::optional<Clock::time_point> timer_due_;
  bool busy_ = false;
  bool stopped_ = false;
  bool settled_ = false;  // the first full pass is done (logged once)
};

}  // namespace p2pshare::peer
