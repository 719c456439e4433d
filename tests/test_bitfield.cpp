#include <catch2/catch.hpp>

#include "p2pshare/bitfield.hpp"

using p2pshare::Bitfield;
using p2pshare::ChunkIndex;

TEST_CASE("bitfield sets, counts and round-trips through its wire form") {
  Bitfield field(10);
  CHECK(field.none());
  field.set(ChunkIndex{0});
  field.set(ChunkIndex{9});
  field.set(ChunkIndex{9});  // idempotent
  CHECK(field.count() == 2);
  CHECK(field.test(ChunkIndex{9}));
  CHECK_FALSE(field.test(ChunkIndex{10}));  // out of range reads as absent
  const std::string wire = field.to_wire();
  REQUIRE(wire.size() == 2);
  CHECK(static_cast<unsigned char>(wire[0]) == 0x80);
  CHECK(static_cast<unsigned char>(wire[1]) == 0x40);
  auto back = Bitfield::from_wire(wire, 10);
  REQUIRE(back);
  CHECK(back->count() == 2);
  CHECK(back->test(ChunkIndex{0}));
  field.set(ChunkIndex{0}, false);
  CHECK(field.count() == 1);
}

TEST_CASE("bitfield from the wire rejects wrong lengths and spare bits") {
  CHECK_FALSE(Bitfield::from_wire(std::string(1, '\0'), 10));
  CHECK_FALSE(Bitfield::from_wire(std::string(3, '\0'), 10));
  CHECK_FALSE(Bitfield::from_wire(std::string("\x00\x01", 2), 10));  // spare bit set
  CHECK(Bitfield::from_wire(std::string("\xff\xc0", 2), 10)->all());
  CHECK(Bitfield::from_wire("", 0));
  CHECK(Bitfield(0).all());
}
