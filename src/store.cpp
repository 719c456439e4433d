#include "p2pshare/store.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare::store {
namespace {

Error io_error(const std::string& what, int err) {
  if (err == ENOSPC) return Error(Errc::io, fmt::format("{}: the disk is full", what));
  return Error(err == ENOENT ? Errc::not_found : Errc::io, fmt::format("{}: {}", what, errno_text(err)));
}

// Characters that change how a terminal shows the rest of a name, or what it
// does: C0 controls (NUL, newline, ESC...), DEL, C1 controls (U+009B is a CSI
// to some terminals), the bidi controls (U+202E makes "x\u202etxt.exe" show
// as "xexe.txt"), and the line and paragraph separators.
bool unsafe_to_show(char32_t c) {
  return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x061c || c == 0x200e || c == 0x200f ||
         (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) || c == 0x2028 || c == 0x2029;
}

}  // namespace

std::string sanitize_name(std::string_view name, std::string_view fallback) {
  // Only the last component of whatever path the sender wrote: both slash
  // kinds count as separators, so "..\\..\\x" and "/etc/passwd" lose their way out.
  const auto cut = name.find_last_of("/\\");
  if (cut != std::string_view::npos) name = name.substr(cut + 1);
  std::string out;
  out.reserve(name.size());
  // Whole characters are dropped, never parts of one: what stays is valid
  // UTF-8, and dropping cannot join two pieces into a new character.
  for (std::size_t i = 0; i < name.size();) {
    const auto c = decode_utf8(name.substr(i));
    if (c.length == 0) {
      ++i;
      continue;
    }
    if (!unsafe_to_show(c.code)) out.append(name.substr(i, c.length));
    i += c.length;
  }
  while (!out.empty() && (out.front() == '.' || out.front() == ' ')) out.erase(out.begin());
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (out.size() > kMaxNameLength) {
    std::size_t end = kMaxNameLength;
    // Do not split a UTF-8 sequence: back up over continuation bytes.
    while (end > 0 && (static_cast<unsigned char>(out[end]) & 0xc0) == 0x80) --end;
    out.resize(end);
    while (!out.empty() && out.back() == ' ') out.pop_back();
  }
  if (out.empty()) out = std::string(fallback);
  return out;
}

std::string display_name(std::string_view name) {
  std::string out;
  out.reserve(name.size());
  for (std::size_t i = 0; i < name.size();) {
    const auto c = decode_utf8(name.substr(i));
    if (c.length == 0 || unsafe_to_show(c.code)) {
      // Replaced, not dropped: the reader sees that something was there.
      out.append("\xef\xbf\xbd");  // U+FFFD
      i += c.length == 0 ? 1 : c.length;
      continue;
    }
    out.append(name.substr(i, c.length));
    i += c.length;
  }
  return out;
}

FileHandle::~FileHandle() {
  if (fd_ >= 0) ::close(fd_);
}

FileHandle& FileHandle::operator=(FileHandle&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void pread_exact(int fd, std::span<std::uint8_t> out, std::uint64_t offset, const std::string& what) {
  std::size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw io_error("cannot read " + what, errno);
    if (n == 0) throw Error(Errc::io, fmt::format("cannot read {}: the file is shorter than expected", what));
    done += static_cast<std::size_t>(n);
  }
}

// Like pread_exact, from the page cache alone: false (nothing to use) when
// any of it would have to come from the disk. preadv2's RWF_NOWAIT answers
// EAGAIN, or a short count, instead of waiting.
bool pread_cached(int fd, std::span<std::uint8_t> out, std::uint64_t offset, const std::string& what) {
  std::size_t done = 0;
  while (done < out.size()) {
    iovec iov{out.data() + done, out.size() - done};
    const ssize_t n = ::preadv2(fd, &iov, 1, static_cast<off_t>(offset + done), RWF_NOWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EOPNOTSUPP)) return false;
    if (n < 0) throw io_error("cannot read " + what, errno);
    if (n == 0) throw Error(Errc::io, fmt::format("cannot read {}: the file is shorter than expected", what));
    done += static_cast<std::size_t>(n);
  }
  return true;
}

void pwrite_exact(int fd, std::span<const std::uint8_t> data, std::uint64_t offset, const std::string& what) {
  std::size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw io_error("cannot write " + what, errno);
    done += static_cast<std::size_t>(n);
  }
}

FileStamp stamp_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return {};
  return {static_cast<std::uint64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

namespace {

FileIdentity identity_from(const struct stat& st) {
  return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
          static_cast<std::uint64_t>(st.st_size),
          static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
          static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec};
}

}  // namespace

std::optional<FileIdentity> identity_of(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return std::nullopt;
  return identity_from(st);
}

std::optional<FileIdentity> identity_of(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return identity_from(st);
}

ChunkReader::ChunkReader(std::filesystem::path path, std::uint64_t expected_size, std::optional<FileIdentity> expected)
    : path_(std::move(path)) {
  file_ = FileHandle(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file_) throw io_error("cannot open " + path_.string(), errno);
  const auto opened = identity_of(file_.get());
  if (!opened) throw io_error("cannot stat " + path_.string(), errno);
  if (opened->size != expected_size) {
    throw Error(Errc::io, fmt::format("{} changed size since it was registered ({} bytes, was {})", path_.string(),
                                      opened->size, expected_size));
  }
  identity_ = expected.value_or(*opened);
  if (*opened != identity_) {
    throw Error(Errc::io, fmt::format("{} changed on disk since it was shared (written or replaced)", path_.string()));
  }
}

void ChunkReader::check_unchanged(bool with_path) const {
  struct stat st {};
  if (::fstat(file_.get(), &st) != 0) throw io_error("cannot stat " + path_.string(), errno);
  const char* change = nullptr;
  if (st.st_nlink == 0) {
    change = "deleted";
  } else if (static_cast<std::uint64_t>(st.st_size) != identity_.size) {
    change = "resized";
  } else if (identity_from(st) != identity_) {
    change = "written";
  } else if (with_path) {
    // The open file may be intact while the path now names another one
    // (replaced by rename): the owner meant the path.
    const auto now = identity_of(path_);
    if (!now) {
      change = "deleted";
    } else if (now->device != identity_.device || now->inode != identity_.inode) {
      change = "replaced";
    }
  }
  if (change != nullptr) {
    throw Error(Errc::io, fmt::format("{} changed on disk since it was shared ({})", path_.string(), change));
  }
}

void ChunkReader::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  check_unchanged(true);
  pread_exact(file_.get(), out, offset, path_.string());
  // A write that raced the pread moved mtime/ctime before it copied its bytes:
  // checking again after the read catches it.
  check_unchanged(false);
}

bool ChunkReader::read_cached(std::uint64_t offset, std::span<std::uint8_t> out) const {
  check_unchanged(true);
  if (!pread_cached(file_.get(), out, offset, path_.string())) return false;
  check_unchanged(false);
  return true;
}

// --- PartialFile: who holds which partial file ----------------------------
//
// The lock is flock(LOCK_EX | LOCK_NB) on the .part file itself, so there is
// no separate lock file to leave behind. flock belongs to the open file
// description, not the process: it is kept while the O_DIRECT second
// descriptor opens and closes (a classic fcntl lock would be dropped by
// closing any descriptor of the file), and it conflicts between two open()s
// of one file even in one process. An OFD lock (F_OFD_SETLK) would behave
// the same; flock is the simpler, whole-file call. Because a second open()
// in this process would conflict with our own lock, the process keeps one
// table of the partial files it holds, keyed by device and inode (as SQLite
// keeps its inode table for POSIX locks): a second PartialFile of a file
// already held here shares the held descriptors instead of locking again.

namespace detail {

struct HeldPartial {
  FileHandle file;    // holds the flock
  FileHandle direct;  // the same file opened O_DIRECT, or none
  std::atomic<bool> direct_ok{false};
  std::uint64_t size = 0;
  std::pair<dev_t, ino_t> key;
  int users = 0;  // PartialFile objects sharing it; guarded by the table's mutex
};

}  // namespace detail

namespace {

using FileKey = std::pair<dev_t, ino_t>;

struct HeldTable {
  std::mutex mutex;
  std::map<FileKey, std::unique_ptr<detail::HeldPartial>> files;
};

HeldTable& held_table() {
  static HeldTable table;
  return table;
}

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Whether `path` still names the file open as `fd` (not renamed or deleted
// by whoever held it before we locked it, nor replaced since).
bool still_named(const std::filesystem::path& path, int fd) {
  struct stat open_st {};
  struct stat named_st {};
  return ::fstat(fd, &open_st) == 0 && ::lstat(path.c_str(), &named_st) == 0 && same_file(open_st, named_st);
}

}  // namespace

std::filesystem::path PartialFile::path_for(const std::filesystem::path& directory, const FileId& id, unsigned n) {
  if (n == 0) return directory / (".p2pshare-" + to_hex(id) + ".part");
  return directory / fmt::format(".p2pshare-{}.{}.part", to_hex(id), n);
}

PartialFile::PartialFile(const std::filesystem::path& directory, const FileId& id, std::uint64_t size) {
  auto& table = held_table();
  std::lock_guard lock(table.mutex);
  unsigned taken = kMaxPartialsPerFile;
  // Another process may rename, delete or create a name between our open
  // and our lock: then the whole search runs again (a bounded number of times).
  for (int attempt = 0; attempt < 100 && taken == kMaxPartialsPerFile; ++attempt) {
    std::optional<unsigned> free_name;
    bool lost_race = false;
    for (unsigned n = 0; n < kMaxPartialsPerFile && !lost_race; ++n) {
      const auto path = path_for(directory, id, n);
      FileHandle file(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW));
      if (!file) {
        if (errno == ENOENT) {
          if (!free_name) free_name = n;
          continue;
        }
        throw io_error("cannot open " + path.string(), errno);
      }
      struct stat st {};
      if (::fstat(file.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        throw Error(Errc::io, fmt::format("{} is not a regular file", path.string()));
      }
      const FileKey key{st.st_dev, st.st_ino};
      if (const auto it = table.files.find(key); it != table.files.end()) {
        // Ours already. A different size would mean resizing under the
        // other user's feet: take another name instead.
        if (it->second->size != size) continue;
        held_ = it->second.get();
        ++held_->users;
        path_ = path;
        taken = n;
        break;
      }
      if (::flock(file.get(), LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) continue;  // another process's download
        throw io_error("cannot lock " + path.string(), errno);
      }
      if (!still_named(path, file.get())) {
        lost_race = true;
        break;
      }
      // Ours now: a partial file of the wrong size holds nothing we can
      // trust, and only now may it be cut.
      created_ = static_cast<std::uint64_t>(st.st_size) != size;
      if (created_ && (::ftruncate(file.get(), 0) != 0 || ::ftruncate(file.get(), static_cast<off_t>(size)) != 0)) {
        throw io_error("cannot size " + path.string(), errno);
      }
      auto held = std::make_unique<detail::HeldPartial>();
      held->file = std::move(file);
      held->size = size;
      held->key = key;
      held->users = 1;
      held_ = held.get();
      table.files.emplace(key, std::move(held));
      path_ = path;
      taken = n;
      break;
    }
    if (taken != kMaxPartialsPerFile || lost_race) continue;
    if (!free_name) {
      throw Error(Errc::io, fmt::format("cannot download {} into {}: {} other downloads of it are using that folder",
                                        to_hex(id), directory.string(), kMaxPartialsPerFile));
    }
    // O_EXCL: of two processes creating the same name, one fails. The lock
    // comes after the create, so someone may open and lock our new, empty
    // file first: then it is theirs, and we look again.
    const auto path = path_for(directory, id, *free_name);
    FileHandle file(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644));
    if (!file) {
      if (errno == EEXIST) continue;
      throw io_error("cannot create " + path.string(), errno);
    }
    if (::flock(file.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) continue;
      throw io_error("cannot lock " + path.string(), errno);
    }
    struct stat st {};
    if (!still_named(path, file.get()) || ::fstat(file.get(), &st) != 0) continue;
    if (::ftruncate(file.get(), static_cast<off_t>(size)) != 0) throw io_error("cannot size " + path.string(), errno);
    auto held = std::make_unique<detail::HeldPartial>();
    held->file = std::move(file);
    held->size = size;
    held->key = {st.st_dev, st.st_ino};
    held->users = 1;
    held_ = held.get();
    table.files.emplace(held_->key, std::move(held));
    path_ = path;
    taken = *free_name;
    created_ = true;
  }
  if (taken == kMaxPartialsPerFile) {
    throw Error(Errc::io, fmt::format("cannot open a partial file for {} in {}: its names keep changing", to_hex(id),
                                      directory.string()));
  }
  for (unsigned n = 0; n < kMaxPartialsPerFile && alone_; ++n) {
    struct stat st {};
    if (n != taken && ::lstat(path_for(directory, id, n).c_str(), &st) == 0) alone_ = false;
  }
  if (held_->users == 1) {
    // Not every file system has O_DIRECT (tmpfs refuses it with EINVAL):
    // then every write is buffered. Opened by name, so checked to be the
    // file we hold.
    FileHandle direct(::open(path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW));
    struct stat direct_st {};
    struct stat held_st {};
    if (direct && ::fstat(direct.get(), &direct_st) == 0 && ::fstat(held_->file.get(), &held_st) == 0 &&
        same_file(direct_st, held_st)) {
      held_->direct = std::move(direct);
      held_->direct_ok = true;
    }
  }
}

PartialFile::~PartialFile() {
  auto& table = held_table();
  std::lock_guard lock(table.mutex);
  if (--held_->users > 0) return;
  // Closing the last descriptor of the description releases the lock.
  table.files.erase(held_->key);
}

int PartialFile::fd() const {
  return held_->file.get();
}

bool PartialFile::writes_direct() const {
  return held_->direct_ok.load(std::memory_order_relaxed);
}

void PartialFile::write(std::uint64_t offset, std::span<const std::uint8_t> data) const {
  const bool aligned = offset % kDirectAlignment == 0 && data.size() % kDirectAlignment == 0 &&
                       reinterpret_cast<std::uintptr_t>(data.data()) % kDirectAlignment == 0;
  std::size_t done = 0;
  if (aligned && held_->direct_ok.load(std::memory_order_relaxed)) {
    while (done < data.size()) {
      const ssize_t n =
          ::pwrite(held_->direct.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      // EINVAL: the device wants a larger alignment than a page; from now on
      // buffered. A short write leaves an unaligned rest: buffered too.
      if (n < 0 && errno == EINVAL) {
        held_->direct_ok = false;
        break;
      }
      if (n < 0) throw io_error("cannot write " + path_.string(), errno);
      done += static_cast<std::size_t>(n);
      if (done % kDirectAlignment != 0) break;
    }
  }
  pwrite_exact(fd(), data.subspan(done), offset + done, path_.string());
}

void PartialFile::write_run(std::uint64_t offset, std::span<const std::span<const std::uint8_t>> pieces) const {
  // The leading pieces that O_DIRECT can take as one request (a run's last
  // piece, the file's tail, often cannot).
  std::size_t direct_pieces = 0;
  std::size_t direct_bytes = 0;
  if (offset % kDirectAlignment == 0 && held_->direct_ok.load(std::memory_order_relaxed)) {
    for (const auto& piece : pieces) {
      if (direct_pieces == static_cast<std::size_t>(IOV_MAX) || piece.size() % kDirectAlignment != 0 ||
          reinterpret_cast<std::uintptr_t>(piece.data()) % kDirectAlignment != 0) {
        break;
      }
      ++direct_pieces;
      direct_bytes += piece.size();
    }
  }
  std::size_t done = 0;
  if (direct_pieces > 0) {
    std::vector<iovec> iov;
    iov.reserve(direct_pieces);
    for (const auto& piece : pieces.first(direct_pieces)) {
      // pwritev only reads through these pointers.
      iov.push_back(
          {const_cast<std::uint8_t*>(piece.data()), piece.size()});  // NOLINT(cppcoreguidelines-pro-type-const-cast)
    }
    std::size_t first = 0;  // the first iovec not wholly written
    while (done < direct_bytes) {
      const ssize_t n = ::pwritev(held_->direct.get(), iov.data() + first, static_cast<int>(iov.size() - first),
                                  static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      // As in write(): EINVAL turns O_DIRECT off for good; a short write
      // with an unaligned rest finishes buffered.
      if (n < 0 && errno == EINVAL) {
        held_->direct_ok = false;
        break;
      }
      if (n < 0) throw io_error("cannot write " + path_.string(), errno);
      if (n == 0) break;
      done += static_cast<std::size_t>(n);
      if (done % kDirectAlignment != 0) break;
      auto left = static_cast<std::size_t>(n);
      while (left > 0) {
        if (left >= iov[first].iov_len) {
          left -= iov[first].iov_len;
          ++first;
        } else {
          iov[first].iov_base = static_cast<std::uint8_t*>(iov[first].iov_base) + left;
          iov[first].iov_len -= left;
          left = 0;
        }
      }
    }
  }
  // What the direct request did not write, piece by piece.
  std::uint64_t at = offset;
  std::size_t skip = done;
  for (const auto& piece : pieces) {
    if (skip >= piece.size()) {
      skip -= piece.size();
    } else {
      write(at + skip, piece.subspan(skip));
      skip = 0;
    }
    at += piece.size();
  }
}

void ChunkWriter::submit(std::uint64_t offset, std::shared_ptr<const ChunkBytes> bytes, Done done) {
  {
    std::lock_guard lock(mutex_);
    pending_.insert_or_assign(offset, Pending{std::move(bytes), std::move(done)});
    if (writing_) return;  // the writer takes it with its next run
    writing_ = true;
  }
  std::vector<Pending> run;
  std::vector<std::span<const std::uint8_t>> pieces;
  for (;;) {
    run.clear();
    pieces.clear();
    std::uint64_t start = 0;
    {
      std::lock_guard lock(mutex_);
      if (pending_.empty()) {
        writing_ = false;
        return;
      }
      auto it = pending_.begin();
      start = it->first;
      std::uint64_t next = start;
      std::size_t bytes_in_run = 0;
      while (it != pending_.end() && it->first == next &&
             (run.empty() || bytes_in_run + it->second.bytes->size() <= kMaxRunBytes)) {
        next += it->second.bytes->size();
        bytes_in_run += it->second.bytes->size();
        run.push_back(std::move(it->second));
        it = pending_.erase(it);
      }
    }
    for (const auto& piece : run) pieces.emplace_back(piece.bytes->data(), piece.bytes->size());
    std::optional<Failure> failure;
    try {
      file_->write_run(start, pieces);
    } catch (const std::exception& e) {
      failure = failure_from(e, Errc::io);
    }
    runs_.fetch_add(1, std::memory_order_relaxed);
    for (auto& piece : run) piece.done(failure);
  }
}

void PartialFile::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  pread_exact(fd(), out, offset, path_.string());
}

void PartialFile::sync() const {
  if (::fdatasync(fd()) != 0) throw io_error("cannot sync " + path_.string(), errno);
}

std::filesystem::path PartialFile::finish(const std::filesystem::path& destination, bool replace) {
  if (::fsync(fd()) != 0) throw io_error("cannot sync " + path_.string(), errno);
  // Renaming by name: the name must still be the file we hold (not one
  // another download created after this one was moved away).
  if (!still_named(path_, fd())) {
    throw Error(Errc::io, fmt::format("cannot move {}: it is no longer the file being downloaded", path_.string()));
  }
  std::filesystem::path target = destination;
  if (replace) {
    // rename(2) replaces a symlink at the target, never writes through it.
    if (::rename(path_.c_str(), target.c_str()) != 0)
      throw io_error("cannot move the file to " + target.string(), errno);
  } else {
    for (int attempt = 1;; ++attempt) {
      if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target.c_str(), RENAME_NOREPLACE) == 0) break;
      if (errno != EEXIST || attempt > 1000) throw io_error("cannot move the file to " + target.string(), errno);
      target = destination.parent_path() /
               fmt::format("{} ({}){}", destination.stem().string(), attempt, destination.extension().string());
    }
  }
  // Make the rename itself durable.
  FileHandle dir(
      ::open(target.parent_path().empty() ? "." : target.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir) ::fsync(dir.get());
  // path_ stays: other disk threads may still be reading through this object.
  return target;
}

void PartialFile::remove() {
  if (still_named(path_, fd())) ::unlink(path_.c_str());
}

}  // namespace p2pshare::store
