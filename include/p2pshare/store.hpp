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
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"

namespace p2pshare::store {

// A name from the network made safe to use as one path component in a
// download dir: no separators, no "." or "..", no control characters (C0,
// DEL, C1), no Unicode bidi controls (U+202E makes "x\u202etxt.exe" show as
// "xexe.txt") or line separators, no bytes outside valid UTF-8, no leading
// dot, at most kMaxNameLength bytes (cut on a UTF-8 boundary). What is left is
// a subsequence of the name's last component. Never empty: falls back to
// `fallback` (e.g. the file id in hex).
std::string sanitize_name(std::string_view name, std::string_view fallback);

// The same name made safe to show on a terminal: invalid UTF-8, control
// characters (C0, DEL, C1), bidi controls and line separators each become
// U+FFFD, so a name can neither hide its real extension nor drive the terminal.
std::string display_name(std::string_view name);

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
  // The same, but only if every byte is in the page cache: false (out's
  // contents then undefined) where read() would wait for the disk. Cheap
  // enough for the network thread, which so skips a disk-pool round trip.
  [[nodiscard]] bool read_cached(std::uint64_t offset, std::span<std::uint8_t> out) const;
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

// How many downloads of one file can share one folder at once.
inline constexpr unsigned kMaxPartialsPerFile = 16;

namespace detail {
struct HeldPartial;
}

// A download in progress: a hidden file in the download dir, pre-sized
// (sparse) to the file's size, named from the verified file id, never from a
// string off the network: `.p2pshare-<file id hex>.part`, or
// `.p2pshare-<file id hex>.<n>.part` (n = 1 .. kMaxPartialsPerFile - 1) when
// other processes are downloading the same file into the same folder.
//
// A partial file belongs to one process for its whole life: an exclusive
// advisory lock (flock) is held on it from open until this object and every
// other PartialFile of this process that shares it are gone. A partial file
// locked by another process is never opened for writing, resized, renamed or
// deleted: the constructor takes the next name instead. One left by a process
// that died (so unlocked) is adopted, and its data reused after the caller
// verifies it. Within one process, a second PartialFile of a file this
// process already holds shares it (a download retried while its old object
// still finishes a disk job must find its own data, not a fresh file).
class PartialFile {
 public:
  // Adopts the first unlocked partial file of `id` in `directory` (resizing
  // it if its size is wrong), or creates one under the first free name.
  // Never follows a symlink. Throws Error(io) when the directory cannot be
  // used or every name is locked by someone else.
  PartialFile(const std::filesystem::path& directory, const FileId& id, std::uint64_t size);
  ~PartialFile();
  PartialFile(const PartialFile&) = delete;
  PartialFile& operator=(const PartialFile&) = delete;
  // The n-th name of `id`'s partial file (0: the plain one).
  static std::filesystem::path path_for(const std::filesystem::path& directory, const FileId& id, unsigned n = 0);

  // Whether earlier data can exist: false when an existing partial file of
  // the right size was adopted.
  bool created() const { return created_; }
  // Whether no other partial file of this id was in the folder when this one
  // was opened. When there were others, the resume state's stamp alone
  // cannot tell which of them this download wrote: verify, don't trust.
  bool alone() const { return alone_; }
  const std::filesystem::path& path() const { return path_; }
  int fd() const;
  // Writes a chunk. A page-aligned write (offset, length and buffer) goes
  // through O_DIRECT when the file system allows it: straight to the disk,
  // with no copy into the page cache and nothing left for the final fsync to
  // write back. Anything else (the last chunk's tail, a file system without
  // O_DIRECT such as tmpfs) is a buffered pwrite. Both are coherent: Linux
  // drops cached pages a direct write covers.
  void write(std::uint64_t offset, std::span<const std::uint8_t> data) const;
  // Writes adjacent pieces as one request: `pieces` lie back to back from
  // `offset`. When every piece is page-aligned, one pwritev through
  // O_DIRECT; otherwise each piece as write() would. Fewer, larger requests
  // cost the disk and the kernel less per byte (docs/benchmarks.md: on this
  // project's virtual disks a 256 KiB direct write runs at half the rate of
  // a 1 MiB one).
  void write_run(std::uint64_t offset, std::span<const std::span<const std::uint8_t>> pieces) const;
  // Whether writes still go through O_DIRECT (for tests and logs).
  bool writes_direct() const;
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const;
  // fdatasync: data written so far survives a power cut.
  void sync() const;
  FileStamp stamp() const { return stamp_of(fd()); }
  // Syncs, then moves the file to `destination` atomically. With
  // `replace` false an existing destination is never overwritten: a
  // suffix " (1)", " (2)"... is added. Returns the final path. Throws
  // Error(io) if path() no longer names the file this object holds.
  std::filesystem::path finish(const std::filesystem::path& destination, bool replace);
  // Deletes the partial file (a download given up for good), only if path()
  // still names the file this object holds.
  void remove();

 private:
  std::filesystem::path path_;
  detail::HeldPartial* held_ = nullptr;  // owned by the process-wide table in store.cpp
  bool created_ = false;
  bool alone_ = true;
};

// Writes one download's verified chunks, gathering neighbours into one
// request: a group commit for data. Disk threads hand chunks in with
// submit(); the one that finds no write under way becomes the writer and
// writes everything pending, as runs of adjacent chunks of at most
// kMaxRunBytes, until nothing is left; the others return at once to hash
// the next chunk. While one run is on its way to the disk the chunks
// verified meanwhile pile up and leave as the next run, so the disk sees
// few, large requests, one at a time per download, and hashing never waits
// for it.
//
// Threading: submit() from any thread. `done` runs on the writing thread,
// once per chunk, with nothing when its bytes were written, or the
// failure of the write that carried them. Memory: what is pending is what the caller handed in; the
// swarm's chunk budget bounds it.
class ChunkWriter {
 public:
  using Done = std::function<void(std::optional<Failure> failure)>;
  static constexpr std::size_t kMaxRunBytes = std::size_t{4} * 1024 * 1024;

  explicit ChunkWriter(std::shared_ptr<const PartialFile> file) : file_(std::move(file)) {}
  void submit(std::uint64_t offset, std::shared_ptr<const ChunkBytes> bytes, Done done);
  // Runs written so far (tests: proves neighbours were gathered).
  std::uint64_t runs_written() const { return runs_.load(std::memory_order_relaxed); }

 private:
  struct Pending {
    std::shared_ptr<const ChunkBytes> bytes;
    Done done;
  };
  std::shared_ptr<const PartialFile> file_;
  std::mutex mutex_;
  std::map<std::uint64_t, Pending> pending_;  // by offset; guarded by mutex_
  bool writing_ = false;                      // a thread is in the write loop; guarded by mutex_
  std::atomic<std::uint64_t> runs_{0};
};

}  // namespace p2pshare::store
