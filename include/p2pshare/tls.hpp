// TLS 1.3 for every connection (docs/protocol.md, "TLS profile"): the
// contexts both ends use, the Ed25519 key pair and self-signed certificate
// each server keeps in its data dir, and what a handshake proved about the
// other side (the SHA-256 of its public key: a peer id or a fingerprint).
//
// The certificate only carries the key: verification accepts any
// self-signed Ed25519 certificate; what the other side is, is derived from
// the key it proved to hold, never from a name in the certificate.
//
// Threading: contexts are shared read-only after setup; the rest is pure.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include <asio/ssl.hpp>

#include "p2pshare/types.hpp"

namespace p2pshare::tls {

// SHA-256 of a public key's DER SubjectPublicKeyInfo.
using KeyHash = std::array<std::uint8_t, 32>;

struct PKeyFree {
  void operator()(EVP_PKEY* key) const noexcept;
};
struct X509Free {
  void operator()(X509* cert) const noexcept;
};
using PKey = std::unique_ptr<EVP_PKEY, PKeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

struct Identity {
  PKey key;
  Cert cert;
  KeyHash key_hash{};  // of the public key
  PeerId peer_id() const { return peer_id_of_key_hash(key_hash); }
  std::string fingerprint() const;
};

// The file names in a data dir.
inline constexpr const char* kKeyFile = "identity.key";
inline constexpr const char* kCertFile = "identity.crt";
// A first-wave peer's 32-byte secret: the seed of its Ed25519 key.
inline constexpr const char* kLegacySecretFile = "peer.key";

// A new key pair and certificate in memory; `seed`: the Ed25519 private key.
Identity make_identity(std::optional<std::span<const std::uint8_t, 32>> seed = std::nullopt);
// identity.key and identity.crt in `dir`, created on first use (the key
// 0600, O_EXCL, fsync'd). With `upgrade_legacy`, a peer.key found instead
// becomes the key's seed and is renamed peer.key.old. Throws Error(io).
Identity load_or_create_identity(const std::filesystem::path& dir, bool upgrade_legacy);
// The certificate in `path` (its key's hash), for a client that pins its own
// peer-server. Throws Error(io).
KeyHash key_hash_of_cert_file(const std::filesystem::path& path);

KeyHash key_hash_of(EVP_PKEY* key);
// 64 lowercase hex digits.
std::string fingerprint_of(const KeyHash& hash);
std::optional<KeyHash> key_hash_from_fingerprint(std::string_view text);

enum class Side { client, server };
// Server: presents `identity`, requests (does not require) a client
// certificate. Client: presents `identity` if given; requires the server's.
std::shared_ptr<asio::ssl::context> make_context(Side side, const Identity* identity);

// After the handshake: the hash of the key the other side proved, if it
// presented a certificate.
std::optional<KeyHash> peer_key_hash(SSL* ssl);

// Trust on first use of a central server's key. `pinned` (from
// --central-fingerprint) decides alone and nothing is recorded; otherwise
// DATA_DIR/known_centrals (lines "HOST:PORT FP") is consulted, and a first
// contact is recorded there (written atomically). Returns the one-line
// refusal naming both fingerprints, or nullopt when the key is accepted.
inline constexpr const char* kKnownCentralsFile = "known_centrals";
std::optional<std::string> check_central_key(const std::string& address, const KeyHash& presented,
                                             const std::optional<KeyHash>& pinned,
                                             const std::filesystem::path& data_dir);

// The OpenSSL error queue as one line (emptied).
std::string last_error();

}  // namespace p2pshare::tls
