// Keys, certificates, ids and fingerprints (p2pshare/tls.hpp): the id is
// derived from the public key alone, a first-wave secret becomes the key's
// seed, and a central server's key is remembered on first contact.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "p2pshare/error.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/types.hpp"
#include "support/temp_dir.hpp"

using namespace p2pshare;

namespace {

// RFC 8032, section 7.1, test 1.
constexpr const char* kSeedHex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
// SHA-256 of its DER SubjectPublicKeyInfo (302a300506032b6570032100 || public key
// d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a).
constexpr const char* kKeyHashHex = "06e3fd8fda29bb60ab59557de61edb0aecdb231134be30e75b455f8e1b792fa9";

std::string seed_bytes() {
  std::string out;
  for (std::size_t i = 0; i < 64; i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(kSeedHex + i, 2), nullptr, 16)));
  return out;
}

}  // namespace

TEST_CASE("a peer id is the first 16 bytes of SHA-256 of the key's DER SubjectPublicKeyInfo", "[tls]") {
  const std::string seed = seed_bytes();
  const auto identity =
      tls::make_identity(std::span<const std::uint8_t, 32>(reinterpret_cast<const std::uint8_t*>(seed.data()), 32));
  CHECK(identity.fingerprint() == kKeyHashHex);
  CHECK(to_hex(identity.peer_id()) == std::string(kKeyHashHex).substr(0, 32));
  CHECK(tls::key_hash_from_fingerprint(kKeyHashHex) == identity.key_hash);
  CHECK_FALSE(tls::key_hash_from_fingerprint("abc"));
  CHECK_FALSE(tls::key_hash_from_fingerprint(std::string(64, 'g')));
  // Fresh keys differ.
  CHECK(tls::make_identity().key_hash != tls::make_identity().key_hash);
}

TEST_CASE("a data dir keeps its key pair: created once (key 0600), loaded after", "[tls]") {
  test::TempDir dir;
  const auto first = tls::load_or_create_identity(dir.path(), true);
  struct stat st {};
  REQUIRE(::stat((dir.path() / tls::kKeyFile).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(std::filesystem::exists(dir.path() / tls::kCertFile));
  const auto again = tls::load_or_create_identity(dir.path(), true);
  CHECK(again.key_hash == first.key_hash);
  CHECK(tls::key_hash_of_cert_file(dir.path() / tls::kCertFile) == first.key_hash);
  // A lost certificate is made again from the key.
  std::filesystem::remove(dir.path() / tls::kCertFile);
  CHECK(tls::load_or_create_identity(dir.path(), true).key_hash == first.key_hash);
  CHECK(std::filesystem::exists(dir.path() / tls::kCertFile));
}

TEST_CASE("a first-wave data dir's 32-byte peer.key becomes the seed of the key, and is kept as peer.key.old",
          "[tls]") {
  test::TempDir dir;
  {
    std::ofstream out(dir.path() / tls::kLegacySecretFile, std::ios::binary);
    out << seed_bytes();
  }
  const auto identity = tls::load_or_create_identity(dir.path(), true);
  CHECK(identity.fingerprint() == kKeyHashHex);
  CHECK_FALSE(std::filesystem::exists(dir.path() / tls::kLegacySecretFile));
  CHECK(test::read_file(dir.path() / "peer.key.old") == seed_bytes());
  CHECK(tls::load_or_create_identity(dir.path(), true).fingerprint() == kKeyHashHex);
}

TEST_CASE("a damaged first-wave peer.key is an error, never silently a new identity", "[tls]") {
  test::TempDir dir;
  {
    std::ofstream out(dir.path() / tls::kLegacySecretFile, std::ios::binary);
    out << "short";
  }
  CHECK_THROWS_AS(tls::load_or_create_identity(dir.path(), true), Error);
  CHECK_FALSE(std::filesystem::exists(dir.path() / tls::kKeyFile));
}

TEST_CASE("a central server's key is remembered on first contact and a changed one refused naming both", "[tls]") {
  test::TempDir dir;
  const auto a = tls::make_identity().key_hash;
  const auto b = tls::make_identity().key_hash;
  CHECK_FALSE(tls::check_central_key("127.0.0.1:7070", a, std::nullopt, dir.path()));
  CHECK_FALSE(tls::check_central_key("127.0.0.1:7070", a, std::nullopt, dir.path()));
  CHECK_FALSE(tls::check_central_key("127.0.0.1:7071", b, std::nullopt, dir.path()));
  const auto refused = tls::check_central_key("127.0.0.1:7070", b, std::nullopt, dir.path());
  REQUIRE(refused);
  CHECK_THAT(*refused, Catch::Contains(tls::fingerprint_of(a)) && Catch::Contains(tls::fingerprint_of(b)) &&
                           Catch::Contains("known_centrals"));
  CHECK(test::read_file(dir.path() / tls::kKnownCentralsFile) ==
        "127.0.0.1:7070 " + tls::fingerprint_of(a) + "\n127.0.0.1:7071 " + tls::fingerprint_of(b) + "\n");
  // Pinned: decides alone, records nothing.
  test::TempDir other;
  CHECK_FALSE(tls::check_central_key("127.0.0.1:7070", b, b, other.path()));
  CHECK(tls::check_central_key("127.0.0.1:7070", b, a, other.path()));
  CHECK_FALSE(std::filesystem::exists(other.path() / tls::kKnownCentralsFile));
}
