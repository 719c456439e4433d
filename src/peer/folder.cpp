#include "peer/folder.hpp"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"

namespace p2pshare::peer {
namespace {

constexpr std::uint32_t kWatchMask = IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO |
                                     IN_ATTRIB | IN_ONLYDIR | IN_DONT_FOLLOW;
// Paths stat'ed per disk job, and files (or bytes) hashed per disk job: the
// disk pool is shared with the transfers.
constexpr std::size_t kExamineBatch = 256;
constexpr std::size_t kHashBatchFiles = 64;
constexpr std::uint64_t kHashBatchBytes = std::uint64_t{64} << 20;
// Files this large are hashed on every core.
constexpr std::uint64_t kParallelHashBytes = std::uint64_t{64} << 20;

bool under(const std::filesystem::path& path, const std::filesystem::path& root) {
  const auto& p = path.native();
  const auto& r = root.native();
  return p.size() > r.size() && p.compare(0, r.size(), r) == 0 && (r.back() == '/' || p[r.size()] == '/');
}

bool same_bytes(const store::FileIdentity& a, const store::FileIdentity& b) {
  return a.device == b.device && a.inode == b.inode && a.size == b.size && a.mtime_ns == b.mtime_ns;
}

}  // namespace

FolderWatcher::FolderWatcher(asio::io_context& io, asio::thread_pool& disk, std::vector<std::filesystem::path> folders,
                             FolderHost host)
    : io_(io), disk_(disk), host_(std::move(host)), buffer_(std::size_t{64} * 1024), timer_(io) {
  for (auto& root : folders) folders_.push_back(Folder{std::move(root)});
}

void FolderWatcher::start(const std::map<std::filesystem::path, KnownFile>& known) {
  fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ < 0) throw Error(Errc::io, fmt::format("cannot watch the shared folders: inotify: {}", errno_text(errno)));
  stream_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd_);
  for (const auto& [path, file] : known) {
    if (folder_for(path) == nullptr) continue;
    remember(path, file);
    mark(path, false, true);  // deleted while we were down: withdrawn
  }
  for (const auto& folder : folders_) walk(folder.root, true);
  read_events();
  next();
}

void FolderWatcher::stop() {
  stopped_ = true;
  timer_.cancel();
  std::error_code ignored;
  if (stream_) stream_->close(ignored);  // closes the inotify descriptor
}

void FolderWatcher::remember(const std::filesystem::path& path, const KnownFile& file) {
  forget_known(path);
  known_[path] = file;
  if (file.identity) by_inode_[{file.identity->device, file.identity->inode}] = path;
}

void FolderWatcher::forget_known(const std::filesystem::path& path) {
  auto it = known_.find(path);
  if (it == known_.end()) return;
  if (it->second.identity) {
    auto inode = by_inode_.find({it->second.identity->device, it->second.identity->inode});
    if (inode != by_inode_.end() && inode->second == path) by_inode_.erase(inode);
  }
  known_.erase(it);
}

FolderWatcher::Folder* FolderWatcher::folder_for(const std::filesystem::path& path) {
  Folder* best = nullptr;
  for (auto& folder : folders_) {
    if (under(path, folder.root) && (!best || folder.root.native().size() > best->root.native().size())) {
      best = &folder;
    }
  }
  return best;
}

const FolderWatcher::Folder* FolderWatcher::folder_for(const std::filesystem::path& path) const {
  return const_cast<FolderWatcher*>(this)->folder_for(path);  // NOLINT(cppcoreguidelines-pro-type-const-cast)
}

std::optional<std::filesystem::path> FolderWatcher::folder_of(const std::filesystem::path& path) const {
  const Folder* folder = folder_for(path);
  return folder ? std::optional(folder->root) : std::nullopt;
}

std::vector<FolderStatus> FolderWatcher::status() const {
  std::vector<FolderStatus> out;
  for (const auto& folder : folders_) {
    FolderStatus s;
    s.path = folder.root;
    s.skipped = folder.skipped;
    s.hashed = folder.hashed;
    s.reused = folder.reused;
    for (const auto& [path, file] : known_) {
      if (folder_for(path) == &folder) ++s.files;
    }
    for (const auto& [path, pending] : pending_) {
      if (folder_for(path) == &folder) ++s.pending;
    }
    for (const auto& path : to_hash_) {
      if (folder_for(path) == &folder) ++s.pending;
    }
    out.push_back(std::move(s));
  }
  return out;
}

void FolderWatcher::touch(const std::filesystem::path& path) {
  if (folder_for(path) != nullptr) mark(path, false);
}

void FolderWatcher::forget(const std::filesystem::path& path) {
  forget_known(path);
  pending_.erase(path);
}

// --- inotify -------------------------------------------------------------

void FolderWatcher::add_watch(const std::filesystem::path& dir) {
  const int wd = ::inotify_add_watch(fd_, dir.c_str(), kWatchMask);
  if (wd < 0) {
    // ENOSPC: fs.inotify.max_user_watches is reached.
    log::warn("cannot watch {}: {} (changes there are seen only at the next start)", dir.string(), errno_text(errno));
    return;
  }
  watches_[wd] = dir;
}

void FolderWatcher::drop_watches_under(const std::filesystem::path& dir) {
  for (auto it = watches_.begin(); it != watches_.end();) {
    if (it->second == dir || under(it->second, dir)) {
      ::inotify_rm_watch(fd_, it->first);
      it = watches_.erase(it);
    } else {
      ++it;
    }
  }
}

// On the network thread: a directory listing is cheap next to hashing, and
// the watch must be in place before the listing so nothing created in
// between is missed.
void FolderWatcher::walk(const std::filesystem::path& dir, bool immediate) {
  add_watch(dir);
  std::error_code ec;
  std::filesystem::recursive_directory_iterator it(dir, std::filesystem::directory_options::skip_permission_denied, ec);
  if (ec) {
    log::warn("cannot list {}: {}", dir.string(), ec.message());
    return;
  }
  for (const std::filesystem::recursive_directory_iterator end; it != end; it.increment(ec)) {
    if (ec) {
      log::warn("cannot list {}: {}", dir.string(), ec.message());
      break;
    }
    const auto status = it->symlink_status(ec);
    if (ec) continue;
    if (std::filesystem::is_directory(status)) {
      add_watch(it->path());
    } else {
      mark(it->path(), false, immediate);
    }
  }
}

void FolderWatcher::rescan() {
  log::warn("the shared folders' change queue overflowed: rescanning them");
  for (const auto& [path, file] : known_) mark(path, false, true);
  for (const auto& folder : folders_) walk(folder.root, true);
}

void FolderWatcher::read_events() {
  stream_->async_read_some(asio::buffer(buffer_),
                           [self = shared_from_this()](const std::error_code& ec, std::size_t bytes) {
                             if (self->stopped_) return;
                             if (ec) {
                               log::error("the shared folders are no longer watched: {}", ec.message());
                               return;
                             }
                             self->on_events(bytes);
                             self->read_events();
                           });
}

void FolderWatcher::on_events(std::size_t bytes) {
  std::size_t at = 0;
  // The kernel writes whole events; the lengths are still checked.
  while (at + sizeof(inotify_event) <= bytes) {
    inotify_event event{};
    std::memcpy(&event, buffer_.data() + at, sizeof(event));
    const std::size_t total = sizeof(inotify_event) + event.len;
    if (at + total > bytes) break;
    std::string name(buffer_.data() + at + sizeof(inotify_event), event.len);
    name.resize(std::strlen(name.c_str()));
    on_event(event.wd, event.mask, name);
    at += total;
  }
  next();
}

void FolderWatcher::on_event(int wd, std::uint32_t mask, const std::string& name) {
  if ((mask & IN_Q_OVERFLOW) != 0) return rescan();
  auto watch = watches_.find(wd);
  if (watch == watches_.end()) return;
  if ((mask & IN_IGNORED) != 0) {
    watches_.erase(watch);
    return;
  }
  if (name.empty()) return;  // about the directory itself: its parent reports it
  const std::filesystem::path path = watch->second / name;
  if ((mask & IN_ISDIR) != 0) {
    if ((mask & (IN_CREATE | IN_MOVED_TO)) != 0) walk(path, false);
    if ((mask & (IN_DELETE | IN_MOVED_FROM)) != 0) {
      drop_watches_under(path);
      for (const auto& [known, file] : known_) {
        if (under(known, path)) mark(known, false);
      }
    }
    return;
  }
  if ((mask & IN_MODIFY) != 0) return mark(path, true);
  mark(path, false);
}

// --- the work queue ------------------------------------------------------

void FolderWatcher::mark(const std::filesystem::path& path, bool writing, bool immediate) {
  auto& pending = pending_[path];
  // Written and not yet closed: a writer that pauses is not mistaken for one that finished.
  if (writing) pending.writing = true;
  if (!writing && !immediate) pending.writing = false;
  pending.last = immediate ? Clock::time_point{} : Clock::now();
}

void FolderWatcher::arm_timer(Clock::time_point when) {
  if (timer_due_ && *timer_due_ <= when) return;
  timer_due_ = when;
  timer_.expires_at(when);
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec || self->stopped_) return;
    self->timer_due_.reset();
    self->next();
  });
}

void FolderWatcher::next() {
  if (busy_ || stopped_) return;
  if (!to_hash_.empty()) return hash_batch();
  const auto now = Clock::now();
  std::vector<std::pair<std::filesystem::path, std::filesystem::path>> due;
  std::optional<Clock::time_point> earliest;
  for (auto it = pending_.begin(); it != pending_.end();) {
    const auto when = it->second.last + (it->second.writing ? kUnclosed : kQuiet);
    const Folder* folder = folder_for(it->first);
    if (folder == nullptr) {
      it = pending_.erase(it);
    } else if (when <= now && due.size() < kExamineBatch) {
      due.emplace_back(it->first, folder->root);
      it = pending_.erase(it);
    } else {
      if (when > now && (!earliest || when < *earliest)) earliest = when;
      if (when <= now) earliest = now;
      ++it;
    }
  }
  if (!due.empty()) return examine(std::move(due));
  if (earliest) return arm_timer(*earliest);
  if (!settled_) {
    settled_ = true;
    for (const auto& s : status()) {
      log::info("share-dir {}: {} files shared, {} hashed, {} unchanged since the last run, {} skipped",
                s.path.string(), s.files, s.hashed, s.reused, s.skipped);
    }
  }
}

// On a disk thread: what each path is now. Opened (not only stat'ed) so an
// unreadable file is told apart; O_NOFOLLOW|O_NONBLOCK so a symlink or FIFO
// never blocks or leads elsewhere.
void FolderWatcher::examine(std::vector<std::pair<std::filesystem::path, std::filesystem::path>> batch) {
  busy_ = true;
  asio::post(disk_, [self = shared_from_this(), batch = std::move(batch)] {
    std::vector<Examined> results;
    for (const auto& [path, root] : batch) {
      Examined out;
      out.path = path;
      struct stat st {};
      if (::lstat(path.c_str(), &st) != 0) {
        out.kind = Kind::gone;
      } else if (S_ISLNK(st.st_mode)) {
        std::error_code ec;
        const auto target = std::filesystem::canonical(path, ec);
        out.kind = !ec && under(target, root) ? Kind::symlink_in : Kind::symlink_out;
      } else if (!S_ISREG(st.st_mode)) {
        out.kind = Kind::special;
      } else {
        store::FileHandle file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
        if (!file) {
          out.kind = errno == ENOENT ? Kind::gone : Kind::unreadable;
        } else {
          out.identity = store::identity_of(file.get());
          out.kind = out.identity ? Kind::regular : Kind::unreadable;
        }
      }
      results.push_back(std::move(out));
    }
    asio::post(self->io_, [self, results = std::move(results)]() mutable {
      self->busy_ = false;
      if (self->stopped_) return;
      self->on_examined(std::move(results));
      self->next();
    });
  });
}

void FolderWatcher::skip(const std::filesystem::path& path, const std::string& why) {
  if (auto known = known_.find(path); known != known_.end()) {
    host_.unshare(known->second.id, path);
    forget_known(path);
  }
  if (!skipped_.insert(path).second) return;
  if (Folder* folder = folder_for(path)) ++folder->skipped;
  log::warn("share-dir: skipped {}: {}", path.string(), why);
}

void FolderWatcher::on_examined(std::vector<Examined> results) {
  // Files found first, gone ones after: a rename's new name claims the id
  // before its old name would withdraw it.
  std::stable_partition(results.begin(), results.end(), [](const Examined& e) { return e.kind == Kind::regular; });
  for (auto& e : results) {
    if (pending_.count(e.path)) continue;  // changed again meanwhile: looked at once quiet
    Folder* folder = folder_for(e.path);
    if (folder == nullptr) continue;
    switch (e.kind) {
      case Kind::gone:
        if (auto known = known_.find(e.path); known != known_.end()) {
          host_.unshare(known->second.id, e.path);
          forget_known(e.path);
        }
        skipped_.erase(e.path);
        break;
      case Kind::symlink_out:
        skip(e.path, "a symlink leading outside the folder");
        break;
      case Kind::symlink_in:
        skip(e.path, "a symlink (what it points to in the folder is shared itself)");
        break;
      case Kind::special:
        skip(e.path, "not a regular file");
        break;
      case Kind::unreadable:
        skip(e.path, "cannot be read");
        break;
      case Kind::regular: {
        skipped_.erase(e.path);
        const auto& now = *e.identity;
        auto known = known_.find(e.path);
        if (known != known_.end() && known->second.identity && *known->second.identity == now) {
          if (!settled_) ++folder->reused;
          break;
        }
        if (known != known_.end() && known->second.identity && same_bytes(*known->second.identity, now)) {
          // Only the ctime moved (chmod, touch -c, a rename over itself).
          const FileId id = known->second.id;
          if (host_.moved(id, e.path, now)) {
            remember(e.path, KnownFile{id, now});
            break;
          }
        }
        // A rename: the inode is recorded under a name that no longer holds it.
        if (auto inode = by_inode_.find({now.device, now.inode});
            known == known_.end() && inode != by_inode_.end() && inode->second != e.path) {
          const auto old_path = inode->second;
          auto old = known_.find(old_path);
          struct stat st {};
          const bool old_still_there = ::lstat(old_path.c_str(), &st) == 0 && st.st_ino == now.inode;
          if (old != known_.end() && old->second.identity && same_bytes(*old->second.identity, now) &&
              !old_still_there) {
            const FileId id = old->second.id;
            forget_known(old_path);
            if (host_.moved(id, e.path, now)) {
              remember(e.path, KnownFile{id, now});
              ++folder->reused;
              log::info("share-dir: {} renamed to {}: still shared as {}", old_path.string(), e.path.string(),
                        to_hex(id));
              break;
            }
          }
        }
        if (known != known_.end()) {
          host_.unshare(known->second.id, e.path);
          forget_known(e.path);
        }
        to_hash_.push_back(e.path);
        break;
      }
    }
  }
}

void FolderWatcher::hash_batch() {
  std::vector<std::filesystem::path> batch;
  while (!to_hash_.empty() && batch.size() < kHashBatchFiles) {
    batch.push_back(std::move(to_hash_.front()));
    to_hash_.pop_front();
  }
  busy_ = true;
  asio::post(disk_, [self = shared_from_this(), batch = std::move(batch)]() mutable {
    std::vector<Hashed> results;
    std::uint64_t bytes = 0;
    std::size_t done = 0;
    for (; done < batch.size() && bytes < kHashBatchBytes; ++done) {
      Hashed out;
      out.path = batch[done];
      try {
        const auto before = store::identity_of(out.path);
        if (!before) throw Error(Errc::io, "it is gone");
        out.identity = *before;
        bytes += before->size;
        out.manifest = build_manifest(out.path, before->size >= kParallelHashBytes ? 0 : 1);
        // Hashes of bytes that moved under us describe no file: looked at again.
        if (store::identity_of(out.path) != before) {
          out.manifest.reset();
          out.error = "changing";
        }
      } catch (const std::exception& e) {
        out.manifest.reset();
        out.error = e.what();
      }
      results.push_back(std::move(out));
    }
    std::vector<std::filesystem::path> rest(std::make_move_iterator(batch.begin() + static_cast<std::ptrdiff_t>(done)),
                                            std::make_move_iterator(batch.end()));
    asio::post(self->io_, [self, results = std::move(results), rest = std::move(rest)]() mutable {
      self->busy_ = false;
      if (self->stopped_) return;
      for (auto it = rest.rbegin(); it != rest.rend(); ++it) self->to_hash_.push_front(std::move(*it));
      self->on_hashed(std::move(results));
      self->next();
    });
  });
}

void FolderWatcher::on_hashed(std::vector<Hashed> results) {
  for (auto& h : results) {
    if (pending_.count(h.path)) continue;  // changed again meanwhile
    Folder* folder = folder_for(h.path);
    if (folder == nullptr) continue;
    if (!h.manifest) {
      if (h.error == "changing" || !std::filesystem::exists(h.path)) {
        mark(h.path, false);  // looked at again once quiet (gone: withdrawn then)
      } else {
        skip(h.path, h.error);
      }
      continue;
    }
    ++folder->hashed;
    const FileId id = h.manifest->file_id();
    remember(h.path, KnownFile{id, h.identity});
    host_.share(h.path, std::move(*h.manifest), h.identity);
  }
}

}  // namespace p2pshare::peer
