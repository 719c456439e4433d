#include "p2pshare/store.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare::store {
namespace {

Error io_error(const std::string& what, int err) {
  if (err == ENOSPC) return Error(Errc::io, fmt::format("{}: the disk is full", what));
  return Error(err == ENOENT ? Errc::not_found : Errc::io, fmt::format("{}: {}", what, std::strerror(err)));
}

}  // namespace

std::string sanitize_name(std::string_view name, std::string_view fallback) {
  // Only the last component of whatever path the sender wrote: both slash
  // kinds count as separators, so "..\\..\\x" and "/etc/passwd" lose their way out.
  const auto cut = name.find_last_of("/\\");
  if (cut != std::string_view::npos) name = name.substr(cut + 1);
  std::string out;
  out.reserve(name.size());
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) continue;  // NUL and control bytes
    out.push_back(c);
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
    if (n == 0) throw Error(Errc::io, fmt::format("cannot read {}: the file is shorter than registered", what));
    done += static_cast<std::size_t>(n);
  }
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

std::filesystem::path PartialFile::path_for(const std::filesystem::path& directory, const FileId& id) {
  return directory / (".p2pshare-" + to_hex(id) + ".part");
}

PartialFile::PartialFile(const std::filesystem::path& directory, const FileId& id, std::uint64_t size)
    : path_(path_for(directory, id)), size_(size) {
  int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    created_ = fd >= 0;
  }
  if (fd < 0) throw io_error("cannot create " + path_.string(), errno);
  file_ = FileHandle(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    throw Error(Errc::io, fmt::format("{} is not a regular file", path_.string()));
  }
  if (static_cast<std::uint64_t>(st.st_size) != size_) {
    // A partial file of the wrong size holds nothing we can trust.
    if (::ftruncate(fd, 0) != 0 || ::ftruncate(fd, static_cast<off_t>(size_)) != 0) {
      throw io_error("cannot size " + path_.string(), errno);
    }
    created_ = true;
  }
  // Not every file system has O_DIRECT (tmpfs refuses it with EINVAL): then
  // every write is buffered.
  direct_ = FileHandle(::open(path_.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC | O_NOFOLLOW));
  direct_ok_ = static_cast<bool>(direct_);
}

void PartialFile::write(std::uint64_t offset, std::span<const std::uint8_t> data) const {
  const bool aligned = offset % kDirectAlignment == 0 && data.size() % kDirectAlignment == 0 &&
                       reinterpret_cast<std::uintptr_t>(data.data()) % kDirectAlignment == 0;
  std::size_t done = 0;
  if (aligned && direct_ok_.load(std::memory_order_relaxed)) {
    while (done < data.size()) {
      const ssize_t n =
          ::pwrite(direct_.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      // EINVAL: the device wants a larger alignment than a page; from now on
      // buffered. A short write leaves an unaligned rest: buffered too.
      if (n < 0 && errno == EINVAL) {
        direct_ok_ = false;
        break;
      }
      if (n < 0) throw io_error("cannot write " + path_.string(), errno);
      done += static_cast<std::size_t>(n);
      if (done % kDirectAlignment != 0) break;
    }
  }
  pwrite_exact(file_.get(), data.subspan(done), offset + done, path_.string());
}

void PartialFile::read(std::uint64_t offset, std::span<std::uint8_t> out) const {
  pread_exact(file_.get(), out, offset, path_.string());
}

void PartialFile::sync() const {
  if (::fdatasync(file_.get()) != 0) throw io_error("cannot sync " + path_.string(), errno);
}

std::filesystem::path PartialFile::finish(const std::filesystem::path& destination, bool replace) {
  if (::fsync(file_.get()) != 0) throw io_error("cannot sync " + path_.string(), errno);
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
  ::unlink(path_.c_str());
}

}  // namespace p2pshare::store
