// The chunk store: files served a chunk at a time with pread, and partial
// downloads written with pwrite at each chunk's offset into a pre-sized file
// that is moved into place only once complete.
//
// Threading: ChunkReader and PartialFile are safe to use from several disk
// threads at once (pread/pwrite at distinct offsets, no shared cursor).
// Opening, finishing and removing happen on one thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "p2pshare/manifest.hpp"

namespace p2pshare::store {

// A name from the network made safe to use as one path component in a
// download dir: no separators, no "." or "..", no NUL or control bytes, no
// leading dot, at most kMaxNameLength bytes (cut on a UTF-8 boundary). Never
// empty: falls back to `fallback` (e.g. the file id in hex).
std::string sanitize_name(std::string_view name, std::string_view fallback);

// Chunk buffers are aligned to this (and O_DIRECT writes need it).
inline constexpr std::size_t kDirectAlignment = 4096;

template <typename T>
struct PageAlignedAllocator {
  using value_type = T;
  PageAlignedAllocator() = default;
  template <typename U>
  PageAlignedAllocator(const PageAlignedAllocator<U>& /*other*/) noexcept {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{kDirectAlignment}));
  }
  void deallocate(T* p, std::size_t /*n*/) noexcept { ::operator delete (p, std::align_val_t{kDirectAlignment}); }
  template <typename U>
  bool operator==(const PageAlignedAllocator<U>& /*other*/) const noexcept {
    return true;
  }
};
// A chunk's bytes in memory, page-aligned.
using ChunkBytes = std::vector<std::uint8_t, PageAlignedAllocator<std::uint8_t>>;

// An open file descriptor, closed on destruction.
class FileHandle {
 public:
  FileHandle() = default;
  explicit FileHandle(int fd) : fd_(fd) {}
  ~FileHandle();
  FileHandle(FileHandle&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  FileHandle& operator=(FileHandle&& other) noexcept;
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Reads exactly out.size() bytes at `offset`; throws Error(io) naming `what`.
void pread_exact(int fd, std::span<std::uint8_t> out, std::uint64_t offset, const std::string& what);
void pwrite_exact(int fd, std::span<const std::uint8_t> data, std::uint64_t offset, const std::string& what);

// Which file a path names and whether its bytes may have changed: device and
// inode say which file, size, mtime and ctime say which version (ctime too,
// because a writer can put mtime back, never ctime).
struct FileIdentity {
  std::uint64_t device = 0;
  std::uint64_t inode = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;
  bool operator==(const FileIdentity&) const = default;
};
// nullopt when the file cannot be stat'ed (gone, no permission).
std::optional<FileIdentity> identity_of(int fd);
std::optional<FileIdentity> identity_of(const std::filesystem::path& path);

// A shared file, served read-only, and only while it is the file that was
// hashed: every read checks (fstat of the open file, stat of its path) that
// it was not deleted, replaced, resized or written since `expected`, before
// and after the pread, so bytes from a changed file are never returned.
// The cost is two stat calls per chunk.
class ChunkReader {
 public:
  // `expected`: the identity the file had when it was hashed (registered or
  // finished downloading); nullopt takes it from the file as opened. Throws
  // Error(not_found/io) if the file is gone or is not that file any more.
  ChunkReader(std::filesystem::path path, std::uint64_t expected_size,
              std::optional<FileIdentity> expected = std::nullopt);
  // Throws Error(io) "... changed on disk ..." when the file changed.
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const;
  const std::filesystem::path& path() const { return path_; }
  int fd() const { return file_.get(); }

 private:
  void check_unchanged(bool with_path) const;

  std::filesystem::path path_;
  FileHandle file_;
  FileIdentity identity_;
};

struct FileStamp {
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};
FileStamp stamp_of(int fd);

// A download in progress: `<dir>/.p2pshare-<file id hex>.part`, pre-sized
// (sparse) to the file's size. The name comes from the verified file id, never
// from a string off the network.
class PartialFile {
 public:
  // Opens the existing partial file or creates it. Never follows a symlink.
  // `created` tells the caller whether earlier data can exist.
  PartialFile(const std::filesystem::path& directory, const FileId& id, std::uint64_t size);
  static std::filesystem::path path_for(const std::filesystem::path& directory, const FileId& id);

  bool created() const { return created_; }
  const std::filesystem::path& path() const { return path_; }
  int fd() const { return file_.get(); }
  // Writes a chunk. A page-aligned write (offset, length and buffer) goes
  // through O_DIRECT when the file system allows it: straight to the disk,
  // with no copy into the page cache and nothing left for the final fsync to
  // write back. Anything else (the last chunk's tail, a file system without
  // O_DIRECT such as tmpfs) is a buffered pwrite. Both are coherent: Linux
  // drops cached pages a direct write covers.
  void write(std::uint64_t offset, std::span<const std::uint8_t> data) const;
  // Whether writes still go through O_DIRECT (for tests and logs).
  bool writes_direct() const { return direct_ok_.load(std::memory_order_relaxed); }
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const;
  // fdatasync: data written so far survives a power cut.
  void sync() const;
  FileStamp stamp() const { return stamp_of(file_.get()); }
  // Syncs, then moves the file to `destination` atomically. With
  // `replace` false an existing destination is never overwritten: a
  // suffix " (1)", " (2)"... is added. Returns the final path.
  std::filesystem::path finish(const std::filesystem::path& destination, bool replace);
  // Deletes the partial file (a download given up for good).
  void remove();

 private:
  std::filesystem::path path_;
  FileHandle file_;
  FileHandle direct_;  // the same file opened O_DIRECT, or none
  mutable std::atomic<bool> direct_ok_{false};
  std::uint64_t size_ = 0;
  bool created_ = false;
};

}  // namespace p2pshare::store
