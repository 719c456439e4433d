// A file cut into fixed-size chunks, each hashed with SHA-256; the file id
// commits to (size, chunk size, every chunk hash). docs/protocol.md gives the
// canonical encoding exactly.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "p2pshare/types.hpp"

namespace p2pshare::pb {
class Manifest;
}

namespace p2pshare {

inline constexpr std::uint32_t kMinChunkSize = 16 * 1024;
inline constexpr std::uint32_t kDefaultChunkSize = 256 * 1024;
inline constexpr std::uint32_t kMaxChunkSize = 16 * 1024 * 1024;
// The hash list of the largest file fits well inside one central frame.
inline constexpr std::uint32_t kMaxChunkCount = 65536;
inline constexpr std::size_t kMaxNameLength = 255;

// The default chunk size for a file of `size` bytes: 256 KiB, doubled until
// the file has at most kMaxChunkCount chunks. Throws Error(bad_request) when
// the file is too large even at kMaxChunkSize (1 TiB).
std::uint32_t choose_chunk_size(std::uint64_t size);

struct Manifest {
  std::uint64_t size = 0;
  std::uint32_t chunk_size = kDefaultChunkSize;
  std::vector<Sha256Digest> chunk_hashes;
  std::string name;  // metadata only; never identity

  std::uint32_t chunk_count() const noexcept { return static_cast<std::uint32_t>(chunk_hashes.size()); }
  std::uint64_t chunk_offset(ChunkIndex i) const noexcept { return static_cast<std::uint64_t>(i.value) * chunk_size; }
  std::uint32_t chunk_length(ChunkIndex i) const noexcept;
  FileId file_id() const;
};

// The UTF-8 sequence at the start of `text`: its code point and length in
// bytes; length 0 when `text` does not start with a valid one (empty, cut
// short, overlong, a surrogate, past U+10FFFF).
struct Utf8Char {
  char32_t code = 0;
  std::size_t length = 0;
};
Utf8Char decode_utf8(std::string_view text) noexcept;

// `text` with every byte that is not part of a valid UTF-8 sequence replaced
// by U+FFFD (protobuf strings must be UTF-8).
std::string valid_utf8(std::string_view text);

// The number of chunks a file of `size` bytes has at `chunk_size` (0 for 0).
std::uint64_t chunk_count_for(std::uint64_t size, std::uint32_t chunk_size) noexcept;

// The hash list as it travels in a manifest and as peer.db stores it: each
// chunk's 32-byte SHA-256, in chunk order, nothing else (docs/protocol.md).
std::string encode_chunk_hashes(const std::vector<Sha256Digest>& chunk_hashes);
// The inverse for a file of `count` chunks. nullopt unless `bytes` is exactly
// 32 * count long: each caller says what a bad list means where it found it
// (a peer's malformed manifest, a corrupt database), never a silent default.
std::optional<std::vector<Sha256Digest>> decode_chunk_hashes(std::span<const std::uint8_t> bytes, std::uint64_t count);

// SHA-256 over the canonical encoding (docs/protocol.md).
FileId compute_file_id(std::uint64_t size, std::uint32_t chunk_size, const std::vector<Sha256Digest>& chunk_hashes);

// Hashes the file at `path` chunk by chunk on `threads` threads (0 = one per
// core), reading with pread into one buffer per thread: memory does not grow
// with the file. Throws Error(not_found / bad_request / io) with a clear message.
Manifest build_manifest(const std::filesystem::path& path, unsigned threads = 0, std::uint32_t chunk_size = 0);

// Wire conversion. from_wire checks everything (chunk size a power of two in
// range, hash list length = 32 * chunk_count_for(size, chunk_size), count
// limit, name length) and throws Error(bad_request) naming the problem.
Manifest manifest_from_wire(const pb::Manifest& wire);
void manifest_to_wire(const Manifest& manifest, pb::Manifest* wire);

}  // namespace p2pshare
