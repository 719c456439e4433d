#include "p2pshare/manifest.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common.pb.h"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare {
namespace {

constexpr char kIdDomain[] = "p2pshare-file-v1";  // 16 bytes, no terminator hashed

void put_be(std::uint8_t* out, std::uint64_t value, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    out[i] = static_cast<std::uint8_t>(value & 0xff);
    value >>= 8;
  }
}

bool valid_chunk_size(std::uint32_t chunk_size) {
  return chunk_size >= kMinChunkSize && chunk_size <= kMaxChunkSize && (chunk_size & (chunk_size - 1)) == 0;
}

}  // namespace

Utf8Char decode_utf8(std::string_view text) noexcept {
  if (text.empty()) return {};
  const auto c = static_cast<unsigned char>(text[0]);
  if (c < 0x80) return {c, 1};
  const std::size_t length = (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
  if (length == 0 || length > text.size()) return {};
  char32_t code = c & (0x7f >> length);
  for (std::size_t k = 1; k < length; ++k) {
    const auto cc = static_cast<unsigned char>(text[k]);
    if ((cc & 0xc0) != 0x80) return {};
    code = code << 6 | (cc & 0x3f);
  }
  static constexpr char32_t kShortest[] = {0, 0, 0x80, 0x800, 0x10000};
  // No overlong forms, no surrogates, nothing past U+10FFFF.
  if (code < kShortest[length] || (code >= 0xd800 && code <= 0xdfff) || code > 0x10ffff) return {};
  return {code, length};
}

std::string valid_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = decode_utf8(text.substr(i));
    if (c.length != 0) {
      out.append(text.substr(i, c.length));
      i += c.length;
    } else {
      out.append("\xef\xbf\xbd");  // U+FFFD
      ++i;
    }
  }
  return out;
}

std::uint32_t choose_chunk_size(std::uint64_t size) {
  std::uint32_t chunk = kDefaultChunkSize;
  while (chunk_count_for(size, chunk) > kMaxChunkCount) {
    if (chunk == kMaxChunkSize) {
      throw Error(Errc::bad_request, fmt::format("file is too large: {} bytes (at most {} bytes)", size,
                                                 static_cast<std::uint64_t>(kMaxChunkSize) * kMaxChunkCount));
    }
    chunk *= 2;
  }
  return chunk;
}

std::uint64_t chunk_count_for(std::uint64_t size, std::uint32_t chunk_size) noexcept {
  if (chunk_size == 0) return 0;
  return size / chunk_size + (size % chunk_size != 0 ? 1 : 0);
}

std::uint32_t Manifest::chunk_length(ChunkIndex i) const noexcept {
  const std::uint64_t offset = chunk_offset(i);
  if (offset >= size) return 0;
  const std::uint64_t rest = size - offset;
  return rest < chunk_size ? static_cast<std::uint32_t>(rest) : chunk_size;
}

FileId Manifest::file_id() const {
  return compute_file_id(size, chunk_size, chunk_hashes);
}

FileId compute_file_id(std::uint64_t size, std::uint32_t chunk_size, const std::vector<Sha256Digest>& chunk_hashes) {
  std::uint8_t header[16 + 8 + 4 + 4];
  std::copy_n(reinterpret_cast<const std::uint8_t*>(kIdDomain), 16, header);
  put_be(header + 16, size, 8);
  put_be(header + 24, chunk_size, 4);
  put_be(header + 28, chunk_hashes.size(), 4);
  Sha256 hasher;
  hasher.update(header);
  for (const auto& h : chunk_hashes) hasher.update(h.bytes);
  return hasher.finish();
}

Manifest build_manifest(const std::filesystem::path& path, unsigned threads, std::uint32_t chunk_size) {
  const store::FileHandle file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file) {
    const int err = errno;
    throw Error(err == ENOENT ? Errc::not_found : Errc::io,
                fmt::format("cannot open {}: {}", path.string(), errno_text(err)));
  }
  struct stat st {};
  if (::fstat(file.get(), &st) != 0) {
    throw Error(Errc::io, fmt::format("cannot stat {}: {}", path.string(), errno_text(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(Errc::bad_request, fmt::format("{} is not a regular file", path.string()));
  }
  Manifest manifest;
  manifest.size = static_cast<std::uint64_t>(st.st_size);
  manifest.chunk_size = chunk_size != 0 ? chunk_size : choose_chunk_size(manifest.size);
  if (!valid_chunk_size(manifest.chunk_size)) {
    throw Error(Errc::bad_request, fmt::format("invalid chunk size {}", manifest.chunk_size));
  }
  // Names travel in protobuf strings, which must be UTF-8: a file name that
  // is not gets its stray bytes replaced.
  manifest.name = valid_utf8(path.filename().string());
  const auto count = chunk_count_for(manifest.size, manifest.chunk_size);
  if (count > kMaxChunkCount) {
    throw Error(Errc::bad_request, fmt::format("file is too large for chunk size {}", manifest.chunk_size));
  }
  manifest.chunk_hashes.resize(count);
  ::posix_fadvise(file.get(), 0, 0, POSIX_FADV_SEQUENTIAL);

  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<std::uint64_t>(threads, std::max<std::uint64_t>(count, 1)));
  std::atomic<std::uint64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
  auto worker = [&] {
    std::vector<std::uint8_t> buffer(
        std::min<std::uint64_t>(manifest.chunk_size, std::max<std::uint64_t>(manifest.size, 1)));
    Sha256 hasher;
    try {
      for (std::uint64_t i = next++; i < count; i = next++) {
        const ChunkIndex index{static_cast<std::uint32_t>(i)};
        const std::uint32_t length = manifest.chunk_length(index);
        store::pread_exact(file.get(), std::span(buffer.data(), length), manifest.chunk_offset(index), path.string());
        hasher.update(std::span(buffer.data(), length));
        manifest.chunk_hashes[i] = hasher.finish();
      }
    } catch (...) {
      std::lock_guard lock(error_mutex);
      if (!error) error = std::current_exception();
      next = count;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return manifest;
}

std::string encode_chunk_hashes(const std::vector<Sha256Digest>& chunk_hashes) {
  std::string out;
  out.reserve(chunk_hashes.size() * Sha256Digest::kSize);
  for (const auto& h : chunk_hashes) out.append(reinterpret_cast<const char*>(h.bytes.data()), h.bytes.size());
  return out;
}

std::optional<std::vector<Sha256Digest>> decode_chunk_hashes(std::span<const std::uint8_t> bytes, std::uint64_t count) {
  // Checked before anything is allocated: `count` may come from a hostile size field.
  if (count > bytes.size() / Sha256Digest::kSize || bytes.size() != count * Sha256Digest::kSize) return std::nullopt;
  std::vector<Sha256Digest> out(count);
  for (std::uint64_t i = 0; i < count; ++i) {
    std::memcpy(out[i].bytes.data(), bytes.data() + i * Sha256Digest::kSize, Sha256Digest::kSize);
  }
  return out;
}

Manifest manifest_from_wire(const pb::Manifest& wire) {
  Manifest manifest;
  manifest.size = wire.size();
  manifest.chunk_size = wire.chunk_size();
  if (!valid_chunk_size(manifest.chunk_size)) {
    throw Error(Errc::bad_request, fmt::format("manifest: invalid chunk size {}", manifest.chunk_size));
  }
  const std::uint64_t count = chunk_count_for(manifest.size, manifest.chunk_size);
  if (count > kMaxChunkCount) {
    throw Error(Errc::bad_request, fmt::format("manifest: {} chunks is over the limit of {}", count, kMaxChunkCount));
  }
  auto hashes = decode_chunk_hashes(
      std::span(reinterpret_cast<const std::uint8_t*>(wire.chunk_hashes().data()), wire.chunk_hashes().size()), count);
  if (!hashes) {
    throw Error(Errc::bad_request,
                fmt::format("manifest: {} bytes of hashes for {} chunks", wire.chunk_hashes().size(), count));
  }
  if (wire.name().size() > kMaxNameLength * 4) {
    throw Error(Errc::bad_request, "manifest: name too long");
  }
  manifest.chunk_hashes = std::move(*hashes);
  manifest.name = wire.name();
  return manifest;
}

void manifest_to_wire(const Manifest& manifest, pb::Manifest* wire) {
  wire->set_size(manifest.size);
  wire->set_chunk_size(manifest.chunk_size);
  wire->set_chunk_hashes(encode_chunk_hashes(manifest.chunk_hashes));
  wire->set_name(manifest.name);
}

}  // namespace p2pshare
