// Strong types for values that are easy to mix up on the wire and on disk.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace p2pshare {

// A SHA-256 digest. The file id is one (docs/protocol.md says of what).
struct Sha256Digest {
  static constexpr std::size_t kSize = 32;
  std::array<std::uint8_t, kSize> bytes{};
  // clang-tidy 14 takes the defaulted <=>'s comparison with 0 for a null pointer.
  auto operator<=>(const Sha256Digest&) const = default;  // NOLINT(modernize-use-nullptr)
};
using FileId = Sha256Digest;

// A peer's id: the first 16 bytes of SHA-256(its secret).
struct PeerId {
  static constexpr std::size_t kSize = 16;
  std::array<std::uint8_t, kSize> bytes{};
  auto operator<=>(const PeerId&) const = default;  // NOLINT(modernize-use-nullptr): as above
};

// The index of a chunk within one file.
struct ChunkIndex {
  std::uint32_t value = 0;
  auto operator<=>(const ChunkIndex&) const = default;  // NOLINT(modernize-use-nullptr): as above
};

std::string to_hex(std::span<const std::uint8_t> bytes);
template <typename Id>
std::string to_hex(const Id& id) {
  return to_hex(std::span<const std::uint8_t>(id.bytes));
}
// Parses exactly 2*N lowercase or uppercase hex digits; nullopt otherwise.
std::optional<FileId> file_id_from_hex(std::string_view hex);
std::optional<PeerId> peer_id_from_hex(std::string_view hex);
// From raw wire bytes: nullopt unless the length is exact.
std::optional<FileId> file_id_from_bytes(std::string_view raw);
std::optional<PeerId> peer_id_from_bytes(std::string_view raw);
// The id a peer's key proves: the first 16 bytes of SHA-256 of its DER
// SubjectPublicKeyInfo (`key_hash`). Every side derives it here.
PeerId peer_id_of_key_hash(std::span<const std::uint8_t, 32> key_hash);
template <typename Id>
std::string to_bytes(const Id& id) {
  return std::string(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size());
}

struct IdHash {
  template <typename Id>
  std::size_t operator()(const Id& id) const noexcept {
    std::size_t h = 0;
    for (std::size_t i = 0; i < sizeof(std::size_t) && i < id.bytes.size(); ++i) {
      h = (h << 8) | id.bytes[i];
    }
    return h;
  }
};

}  // namespace p2pshare
