// SHA-256 through OpenSSL's EVP interface (SHA-NI where the CPU has it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "p2pshare/types.hpp"

namespace p2pshare {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::span<const std::uint8_t> data);
  // Returns the digest and resets for reuse.
  Sha256Digest finish();

  static Sha256Digest digest(std::span<const std::uint8_t> data);

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Constant-time comparison for secrets.
bool constant_time_equal(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b);

// Cryptographically random bytes (OpenSSL RAND_bytes).
void random_bytes(std::span<std::uint8_t> out);

}  // namespace p2pshare
