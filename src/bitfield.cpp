#include "p2pshare/bitfield.hpp"

namespace p2pshare {

Bitfield::Bitfield(std::uint32_t size, bool value)
    : size_(size), count_(value ? size : 0), bits_((static_cast<std::size_t>(size) + 7) / 8, 0) {
  if (value) {
    for (std::uint32_t i = 0; i < size; ++i) bits_[i / 8] |= static_cast<std::uint8_t>(0x80u >> (i % 8));
  }
}

std::optional<Bitfield> Bitfield::from_wire(std::string_view raw, std::uint32_t size) {
  const std::size_t bytes = (static_cast<std::size_t>(size) + 7) / 8;
  if (raw.size() != bytes) return std::nullopt;
  Bitfield field(size);
  for (std::size_t i = 0; i < bytes; ++i) field.bits_[i] = static_cast<std::uint8_t>(raw[i]);
  if (size % 8 != 0 && bytes > 0) {
    const auto spare = static_cast<std::uint8_t>(0xffu >> (size % 8));
    if ((field.bits_.back() & spare) != 0) return std::nullopt;
  }
  std::uint32_t count = 0;
  for (auto b : field.bits_) count += static_cast<std::uint32_t>(__builtin_popcount(b));
  field.count_ = count;
  return field;
}

std::string Bitfield::to_wire() const {
  return std::string(reinterpret_cast<const char*>(bits_.data()), bits_.size());
}

bool Bitfield::test(ChunkIndex i) const noexcept {
  if (i.value >= size_) return false;
  return (bits_[i.value / 8] & (0x80u >> (i.value % 8))) != 0;
}

void Bitfield::set(ChunkIndex i, bool value) noexcept {
  if (i.value >= size_ || test(i) == value) return;
  const auto mask = static_cast<std::uint8_t>(0x80u >> (i.value % 8));
  if (value) {
    bits_[i.value / 8] |= mask;
    ++count_;
  } else {
    bits_[i.value / 8] &= static_cast<std::uint8_t>(~mask);
    --count_;
  }
}

}  // namespace p2pshare
