#include "p2pshare/accounts.hpp"

#include <algorithm>
#include <array>
#include <mutex>

#include <fmt/format.h>
#include <sodium.h>

#include "common.pb.h"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"

namespace p2pshare::accounts {

PasswordCost interactive_cost() {
  return {crypto_pwhash_OPSLIMIT_INTERACTIVE, crypto_pwhash_MEMLIMIT_INTERACTIVE};
}

PasswordCost minimum_cost() {
  return {crypto_pwhash_OPSLIMIT_MIN, crypto_pwhash_MEMLIMIT_MIN};
}

void init_sodium() {
  static std::once_flag once;
  static bool ok = false;
  std::call_once(once, [] { ok = sodium_init() >= 0; });
  if (!ok) throw Error(Errc::io, "libsodium could not be initialised");
}

std::string hash_password(std::string_view password, PasswordCost cost) {
  init_sodium();
  std::array<char, crypto_pwhash_STRBYTES> out{};
  if (crypto_pwhash_str_alg(out.data(), password.data(), password.size(), cost.opslimit, cost.memlimit,
                            crypto_pwhash_ALG_ARGON2ID13) != 0) {
    throw Error(Errc::unavailable, "out of memory hashing a password");
  }
  return {out.data()};
}

bool verify_password(const std::string& stored, std::string_view password) {
  init_sodium();
  if (stored.size() >= crypto_pwhash_STRBYTES) return false;
  return crypto_pwhash_str_verify(stored.c_str(), password.data(), password.size()) == 0;
}

const std::string& dummy_hash(PasswordCost cost) {
  static std::once_flag once;
  static std::string hash;
  std::call_once(once, [cost] {
    std::array<std::uint8_t, 32> random{};
    random_bytes(random);
    hash = hash_password(std::string_view(reinterpret_cast<const char*>(random.data()), random.size()), cost);
  });
  return hash;
}

std::optional<std::string> name_error(std::string_view kind, std::string_view name) {
  if (name.empty() || name.size() > kMaxName) {
    return fmt::format("{} name must be 1 to {} characters", kind, kMaxName);
  }
  const auto allowed = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
  };
  const char first = name.front();
  if (!std::all_of(name.begin(), name.end(), allowed) || first == '.' || first == '_' || first == '-') {
    return fmt::format("{} name may hold only letters, digits, '.', '_' and '-', and must start with a letter or digit",
                       kind);
  }
  return std::nullopt;
}

Throttle::Throttle(std::size_t capacity, std::uint32_t free_failures, std::chrono::milliseconds base,
                   std::chrono::milliseconds max)
    : capacity_(std::max<std::size_t>(capacity, 1)), free_failures_(free_failures), base_(base), max_(max) {}

std::chrono::milliseconds Throttle::wait(const std::string& key, Clock::time_point now) {
  auto it = map_.find(key);
  if (it == map_.end() || it->second->next_allowed <= now) return std::chrono::milliseconds(0);
  return std::chrono::ceil<std::chrono::milliseconds>(it->second->next_allowed - now);
}

void Throttle::failed(const std::string& key, Clock::time_point now) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    if (map_.size() >= capacity_) {
      map_.erase(lru_.back().key);
      lru_.pop_back();
    }
    lru_.push_front(Entry{key, 0, now});
    it = map_.emplace(key, lru_.begin()).first;
  } else {
    lru_.splice(lru_.begin(), lru_, it->second);
  }
  Entry& entry = *it->second;
  entry.failures = std::min<std::uint32_t>(entry.failures + 1, 64);
  if (entry.failures > free_failures_) {
    const std::uint32_t doublings = std::min<std::uint32_t>(entry.failures - free_failures_ - 1, 30);
    auto delay = base_ * (std::int64_t{1} << doublings);
    entry.next_allowed = now + std::min(delay, max_);
  }
}

void Throttle::succeeded(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return;
  lru_.erase(it->second);
  map_.erase(it);
}

namespace {

// DER SubjectPublicKeyInfo of an Ed25519 key: this prefix, then the 32 bytes.
constexpr std::array<std::uint8_t, 12> kEd25519SpkiPrefix = {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03,
                                                             0x2b, 0x65, 0x70, 0x03, 0x21, 0x00};

std::string signed_bytes(std::string_view body) {
  std::string message(kCapabilityContext);
  message.append(body);
  return message;
}

std::span<const std::uint8_t> as_bytes(std::string_view text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

[[noreturn]] void refuse(const std::string& why) {
  throw Error(Errc::unauthorized, "capability refused: " + why);
}

}  // namespace

tls::KeyHash ed25519_key_hash(std::string_view raw_public_key) {
  Sha256 sha;
  sha.update(kEd25519SpkiPrefix);
  sha.update(as_bytes(raw_public_key));
  const auto digest = sha.finish();
  tls::KeyHash hash{};
  std::copy(digest.bytes.begin(), digest.bytes.end(), hash.begin());
  return hash;
}

pb::Capability sign_capability(const Capability& capability, EVP_PKEY* central_key) {
  pb::CapabilityBody body;
  body.set_user(capability.user);
  body.set_subject(to_bytes(capability.subject));
  body.set_group(capability.group);
  body.set_expires_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(capability.expires.time_since_epoch()).count());
  pb::Capability wire;
  wire.set_body(body.SerializeAsString());
  const std::string message = signed_bytes(wire.body());
  std::array<std::uint8_t, 64> signature{};
  std::size_t length = signature.size();
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!context || EVP_DigestSignInit(context.get(), nullptr, nullptr, nullptr, central_key) != 1 ||
      EVP_DigestSign(context.get(), signature.data(), &length, reinterpret_cast<const unsigned char*>(message.data()),
                     message.size()) != 1 ||
      length != signature.size()) {
    throw Error(Errc::io, "signing a capability failed: " + tls::last_error());
  }
  wire.set_signature(std::string(reinterpret_cast<const char*>(signature.data()), length));
  std::array<std::uint8_t, 32> raw{};
  std::size_t raw_length = raw.size();
  if (EVP_PKEY_get_raw_public_key(central_key, raw.data(), &raw_length) != 1 || raw_length != raw.size()) {
    throw Error(Errc::io, "the central server's key is not Ed25519");
  }
  wire.set_central_key(std::string(reinterpret_cast<const char*>(raw.data()), raw.size()));
  return wire;
}

Capability verify_capability(const pb::Capability& wire, const tls::KeyHash& trusted_central, const PeerId& presenter,
                             std::chrono::system_clock::time_point now) {
  init_sodium();
  if (wire.central_key().size() != crypto_sign_PUBLICKEYBYTES) refuse("signer key must be 32 bytes");
  if (wire.signature().size() != crypto_sign_BYTES) refuse("signature must be 64 bytes");
  if (wire.body().empty() || wire.body().size() > kMaxCapabilityBody) refuse("body of a wrong size");
  const auto signer = ed25519_key_hash(wire.central_key());
  if (!constant_time_equal(signer, trusted_central)) refuse("not signed by the central server this peer trusts");
  const std::string message = signed_bytes(wire.body());
  if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(wire.signature().data()),
                                  reinterpret_cast<const unsigned char*>(message.data()), message.size(),
                                  reinterpret_cast<const unsigned char*>(wire.central_key().data())) != 0) {
    refuse("bad signature");
  }
  pb::CapabilityBody body;
  if (!body.ParseFromString(wire.body())) refuse("malformed body");
  Capability out;
  auto subject = peer_id_from_bytes(body.subject());
  if (!subject) refuse("subject must be a 16-byte peer id");
  out.subject = *subject;
  if (name_error("user", body.user()) || name_error("group", body.group())) refuse("malformed user or group name");
  out.user = body.user();
  out.group = body.group();
  // Compared as milliseconds before it becomes a time_point: a far-future
  // value from the network would overflow the clock's nanoseconds. No central
  // server issues one for more than an hour (--capability-lifetime); a day
  // leaves room for clock skew.
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  constexpr std::int64_t kMaxAheadMs = std::int64_t{24} * 3600 * 1000;
  const std::int64_t expires_ms = body.expires_ms();
  if (expires_ms <= now_ms) refuse("expired");
  if (expires_ms - now_ms > kMaxAheadMs) refuse("expires too far ahead");
  out.expires = std::chrono::system_clock::time_point(std::chrono::milliseconds(expires_ms));
  if (out.expires <= now) refuse("expired");
  if (out.subject != presenter) refuse("issued to another peer");
  return out;
}

}  // namespace p2pshare::accounts
