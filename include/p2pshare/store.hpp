// The chunk store: files served a chunk at a time with pread, and partial
// downloads written with pwrite at each chunk's offset into a pre-sized file
// that is moved into place only once complete.
//
// Threading: ChunkReader and PartialFile are safe to use from several disk
// threads at once (pread/pwrite at distinct offsets, no shared cursor).
// Opening, finishing and removing happen on one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "p2pshare/manifest.hpp"

namespace p2pshare::store {

// A name from the network made safe to use as one path component in a
// download dir: no separators, no "." or "..", no NUL or control bytes, no
// leading dot, at most kMaxNameLength bytes (cut on a UTF-8 boundary). Never
// empty: falls back to `fallback` (e.g. the file id in hex).
std::string sanitize_name(std::string_view name, std::string_view fallback);

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

// A registered file, served read-only.
class ChunkReader {
 public:
  // Throws Error(not_found/io) if the file is gone or its size changed.
  ChunkReader(std::filesystem::path path, std::uint64_t expected_size);
  void read(std::uint64_t offset, std::span<std::uint8_t> out) const;
  const std::filesystem::path& path() const { return path_; }
  int fd() const { return file_.get(); }

 private:
  std::filesystem::path path_;
  FileHandle file_;
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
  void write(std::uint64_t offset, std::span<const std::uint8_t> data) const;
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
  std::uint64_t size_ = 0;
  bool created_ = false;
};

}  // namespace p2pshare::store
