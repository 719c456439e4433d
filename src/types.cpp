#include "p2pshare/types.hpp"

#include <algorithm>

#include "p2pshare/hash.hpp"

namespace p2pshare {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

template <typename Id>
std::optional<Id> id_from_hex(std::string_view hex) {
  Id id;
  if (hex.size() != id.bytes.size() * 2) return std::nullopt;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) {
    const int hi = hex_value(hex[2 * i]);
    const int lo = hex_value(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    id.bytes[i] = static_cast<std::uint8_t>(hi << 4 | lo);
  }
  return id;
}

template <typename Id>
std::optional<Id> id_from_bytes(std::string_view raw) {
  Id id;
  if (raw.size() != id.bytes.size()) return std::nullopt;
  for (std::size_t i = 0; i < raw.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(raw[i]);
  return id;
}

}  // namespace

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(bytes.size() * 2, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0x0f];
  }
  return out;
}

std::optional<FileId> file_id_from_hex(std::string_view hex) {
  return id_from_hex<FileId>(hex);
}
std::optional<PeerId> peer_id_from_hex(std::string_view hex) {
  return id_from_hex<PeerId>(hex);
}
std::optional<FileId> file_id_from_bytes(std::string_view raw) {
  return id_from_bytes<FileId>(raw);
}
std::optional<PeerId> peer_id_from_bytes(std::string_view raw) {
  return id_from_bytes<PeerId>(raw);
}

PeerId peer_id_of_key_hash(std::span<const std::uint8_t, 32> key_hash) {
  PeerId id;
  std::copy_n(key_hash.begin(), PeerId::kSize, id.bytes.begin());
  return id;
}

}  // namespace p2pshare
