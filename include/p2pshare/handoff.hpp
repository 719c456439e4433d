// Handing a file to someone: the `p2pshare://` share link and the .p2ps
// manifest file (docs/protocol.md, "Share links" and "Manifest files" give
// both byte for byte). Both carry what a stranger needs to fetch the file:
// its id (or every chunk hash), name and size, and the central server's
// address and key fingerprint.
//
// Both decoders take hostile input (a link pasted from anywhere, a file
// handed over by anyone): every length is checked before use, and a decoded
// name is metadata only, sanitized before it names anything on disk.
//
// Threading: pure functions.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "p2pshare/manifest.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::handoff {

// SHA-256 of the central server's public key (tls::KeyHash).
using Fingerprint = std::array<std::uint8_t, 32>;

// --- share links -------------------------------------------------------------

inline constexpr std::string_view kLinkScheme = "p2pshare://";
inline constexpr unsigned kLinkVersion = 1;
// The longest link a writer makes is about 4,140 characters (a 1020-byte name
// all percent-encoded, a 300-byte address).
inline constexpr std::size_t kMaxLinkLength = 8192;
// Names as long as a manifest may carry (manifest_from_wire's limit).
inline constexpr std::size_t kMaxHandoffNameLength = kMaxNameLength * 4;
// The largest file a manifest describes: kMaxChunkCount chunks of kMaxChunkSize.
inline constexpr std::uint64_t kMaxFileSize = std::uint64_t{kMaxChunkCount} * kMaxChunkSize;

struct ShareLink {
  FileId file_id;
  std::string name;  // UTF-8, 1 .. kMaxHandoffNameLength bytes
  std::uint64_t size = 0;
  std::string central;  // HOST:PORT
  Fingerprint central_fingerprint{};
  bool operator==(const ShareLink&) const = default;
};

// p2pshare://v1/ID?name=NAME&size=SIZE&central=HOST:PORT&fp=FINGERPRINT
std::string encode_link(const ShareLink& link);
// Throws Error(usage) "malformed link: <why>" (a link is typed on the command
// line), or "link version N is not supported" for a later version.
ShareLink decode_link(std::string_view text);

// RFC 3986 percent-encoding: every byte but ALPHA, DIGIT, "-._~" and those in
// `keep` becomes %XX (uppercase hex).
std::string percent_encode(std::string_view bytes, std::string_view keep = {});

// --- manifest files (.p2ps) -------------------------------------------------

inline constexpr std::string_view kManifestMagic{"p2psman\n", 8};
inline constexpr std::uint32_t kManifestVersion = 1;
// The largest valid manifest file: the header, the longest central address
// and name, every hash of the largest file, the checksum.
inline constexpr std::size_t kMaxManifestFileSize =
    96 + 300 + kMaxHandoffNameLength + std::size_t{kMaxChunkCount} * 32 + 32;

struct ManifestFile {
  Manifest manifest;    // its name is metadata, as in a link
  std::string central;  // HOST:PORT
  Fingerprint central_fingerprint{};
};

std::string encode_manifest_file(const ManifestFile& file);
// Throws Error(verification) naming what is wrong: not a manifest file,
// another version, truncated, damaged (checksum), a field out of range, a
// file id that the chunk hashes do not give.
ManifestFile decode_manifest_file(std::span<const std::uint8_t> bytes);

}  // namespace p2pshare::handoff
