// Accounts: what the central server and the peers need to know users and
// groups safely (docs/protocol.md, "Accounts, groups and capabilities").
// - Password hashes: Argon2id through libsodium's crypto_pwhash_str.
// - Throttle: delays password guesses per key in a fixed-capacity table.
// - Names of users and groups: the rules the central server enforces.
// - Capabilities: a group membership, signed by the central server's
//   Ed25519 key and checked by a holder offline.
//
// Threading: the password functions may run on any thread (the central
// server runs them on a bounded worker pool); the rest is pure or owned by
// one thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include <openssl/evp.h>

#include "p2pshare/tls.hpp"
#include "p2pshare/types.hpp"

namespace p2pshare::pb {
class Capability;
}

namespace p2pshare::accounts {

// Argon2id cost. kInteractive is what the central server uses (libsodium's
// INTERACTIVE level: 2 passes over 64 MiB); kMinimum is for tests only.
struct PasswordCost {
  unsigned long long opslimit;
  std::size_t memlimit;
};
PasswordCost interactive_cost();
PasswordCost minimum_cost();

// Initialises libsodium once (thread-safe); throws if it cannot.
void init_sodium();
// An encoded Argon2id hash with its own salt and parameters ("$argon2id$...").
std::string hash_password(std::string_view password, PasswordCost cost);
// True if `password` matches `stored`. A malformed `stored` is false.
bool verify_password(const std::string& stored, std::string_view password);
// A fixed hash of a random password, verified for unknown users so that a
// wrong user name costs the same time as a wrong password.
const std::string& dummy_hash(PasswordCost cost);
// Passwords: 8..1024 bytes (a longer one would only cost hashing time).
inline constexpr std::size_t kMinPassword = 8;
inline constexpr std::size_t kMaxPassword = 1024;

// Names of users and groups: 1..32 characters of [A-Za-z0-9._-], starting
// with a letter or digit. Returns the one-line refusal, or nullopt.
inline constexpr std::size_t kMaxName = 32;
std::optional<std::string> name_error(std::string_view kind, std::string_view name);

// Exponential delay after failed attempts, per key (a user name, an
// address). Memory is bounded: at most `capacity` keys; the least recently
// touched one is forgotten to make room (an attacker can thus reset one
// key's count only by touching `capacity` others, which costs time).
class Throttle {
 public:
  using Clock = std::chrono::steady_clock;
  Throttle(std::size_t capacity, std::uint32_t free_failures, std::chrono::milliseconds base,
           std::chrono::milliseconds max);
  // How long `key` must still wait before another attempt (zero: now).
  std::chrono::milliseconds wait(const std::string& key, Clock::time_point now);
  void failed(const std::string& key, Clock::time_point now);
  void succeeded(const std::string& key);
  std::size_t size() const noexcept { return map_.size(); }
  std::size_t capacity() const noexcept { return capacity_; }

 private:
  struct Entry {
    std::string key;
    std::uint32_t failures = 0;
    Clock::time_point next_allowed{};
  };
  std::list<Entry> lru_;  // most recently touched first
  std::unordered_map<std::string, std::list<Entry>::iterator> map_;
  std::size_t capacity_;
  std::uint32_t free_failures_;
  std::chrono::milliseconds base_;
  std::chrono::milliseconds max_;
};

// What a capability grants.
struct Capability {
  std::string user;
  PeerId subject;  // the peer id the holder of the capability must prove
  std::string group;
  std::chrono::system_clock::time_point expires;
};

inline constexpr std::string_view kCapabilityContext{"p2pshare capability v1\0", 23};
inline constexpr std::size_t kMaxCapabilityBody = 256;

// Signs with the central server's Ed25519 key.
pb::Capability sign_capability(const Capability& capability, EVP_PKEY* central_key);
// Checks a capability presented on a link whose other side proved
// `presenter`: the signer's key must hash (SHA-256 of its DER SPKI) to
// `trusted_central`, the signature must hold, it must not have expired
// at `now`, and its subject must be `presenter`. Throws
// Error(Errc::unauthorized) naming which check failed. The group is the
// caller's to check.
Capability verify_capability(const pb::Capability& wire, const tls::KeyHash& trusted_central, const PeerId& presenter,
                             std::chrono::system_clock::time_point now);
// SHA-256 of the DER SubjectPublicKeyInfo of a raw Ed25519 public key: the
// fingerprint a peer pins for its central server.
tls::KeyHash ed25519_key_hash(std::string_view raw_public_key);

}  // namespace p2pshare::accounts
