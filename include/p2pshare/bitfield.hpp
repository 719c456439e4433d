// Which chunks of a file someone has. Wire form: ceil(n/8) bytes, bit i is
// (byte i/8) & (0x80 >> i%8), spare bits zero.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "p2pshare/types.hpp"

namespace p2pshare {

class Bitfield {
 public:
  Bitfield() = default;
  explicit Bitfield(std::uint32_t size, bool value = false);

  // nullopt unless raw is exactly the wire form for `size` bits (length and
  // zero spare bits): a peer's bytes are checked, never trusted.
  static std::optional<Bitfield> from_wire(std::string_view raw, std::uint32_t size);
  std::string to_wire() const;

  std::uint32_t size() const noexcept { return size_; }
  std::uint32_t count() const noexcept { return count_; }
  bool all() const noexcept { return count_ == size_; }
  bool none() const noexcept { return count_ == 0; }
  bool test(ChunkIndex i) const noexcept;
  void set(ChunkIndex i, bool value = true) noexcept;

 private:
  std::uint32_t size_ = 0;
  std::uint32_t count_ = 0;
  std::vector<std::uint8_t> bits_;
};

}  // namespace p2pshare
