// Fuzzes the two things a peer or a central server accepts about a file from
// the network: a manifest (manifest_from_wire, which every Announce and every
// GetFile answer goes through) and a bitfield (Bitfield::from_wire, for
// Interested, Bitfield and partial Announces).
//
// Input: 4 bytes (big-endian bit count for the bitfield check) | the rest,
// which is both the raw bitfield and a serialized pb::Manifest.
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include <google/protobuf/stubs/logging.h>

#include "common.pb.h"
#include "p2pshare/bitfield.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"

namespace {

using namespace p2pshare;

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

void check_bitfield(std::string_view raw, std::uint32_t bits) {
  auto field = Bitfield::from_wire(raw, bits);
  const std::size_t bytes = (static_cast<std::size_t>(bits) + 7) / 8;
  if (!field) {
    // Refused: the length must be wrong or a spare bit set.
    const bool spare_set = raw.size() == bytes && bits % 8 != 0 && bytes > 0 &&
                           (static_cast<std::uint8_t>(raw.back()) & (0xffu >> (bits % 8))) != 0;
    FUZZ_CHECK(raw.size() != bytes || spare_set);
    return;
  }
  FUZZ_CHECK(raw.size() == bytes);
  FUZZ_CHECK(field->size() == bits);
  FUZZ_CHECK(field->to_wire() == raw);
  std::uint32_t count = 0;
  for (std::uint32_t i = 0; i < bits; ++i) {
    const bool bit = (static_cast<std::uint8_t>(raw[i / 8]) & (0x80u >> (i % 8))) != 0;
    FUZZ_CHECK(field->test(ChunkIndex{i}) == bit);
    count += bit ? 1 : 0;
  }
  FUZZ_CHECK(field->count() == count);
  FUZZ_CHECK(field->all() == (count == bits));
  FUZZ_CHECK(field->none() == (count == 0));
  FUZZ_CHECK(!field->test(ChunkIndex{bits}));  // out of range reads as absent
  // set() keeps count() and the wire form consistent, and ignores out of range.
  Bitfield copy = *field;
  copy.set(ChunkIndex{bits}, true);
  FUZZ_CHECK(copy.count() == count);
  if (bits > 0) {
    const ChunkIndex last{bits - 1};
    const bool was = copy.test(last);
    copy.set(last, !was);
    FUZZ_CHECK(copy.test(last) == !was);
    FUZZ_CHECK(copy.count() == (was ? count - 1 : count + 1));
    FUZZ_CHECK(Bitfield::from_wire(copy.to_wire(), bits).has_value());
    copy.set(last, was);
    FUZZ_CHECK(copy.to_wire() == raw);
  }
}

void check_manifest(const pb::Manifest& wire) {
  Manifest manifest;
  try {
    manifest = manifest_from_wire(wire);
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == Errc::bad_request);
    return;
  }
  const std::uint32_t cs = manifest.chunk_size;
  FUZZ_CHECK(cs >= kMinChunkSize && cs <= kMaxChunkSize && std::has_single_bit(cs));
  const std::uint32_t count = manifest.chunk_count();
  FUZZ_CHECK(count == chunk_count_for(manifest.size, cs));
  FUZZ_CHECK(count <= kMaxChunkCount);
  FUZZ_CHECK(manifest.size == wire.size());
  if (count == 0) {
    FUZZ_CHECK(manifest.size == 0);
  } else {
    const ChunkIndex last{count - 1};
    const std::uint32_t last_length = manifest.chunk_length(last);
    FUZZ_CHECK(last_length > 0 && last_length <= cs);
    FUZZ_CHECK(manifest.chunk_offset(last) + last_length == manifest.size);
    if (count > 1) FUZZ_CHECK(manifest.chunk_length(ChunkIndex{0}) == cs);
  }
  FUZZ_CHECK(manifest.chunk_length(ChunkIndex{count}) == 0);

  // Round trip: what we send is what we accepted, and means the same file.
  pb::Manifest again;
  manifest_to_wire(manifest, &again);
  FUZZ_CHECK(again.size() == wire.size());
  FUZZ_CHECK(again.chunk_size() == wire.chunk_size());
  FUZZ_CHECK(again.chunk_hashes() == wire.chunk_hashes());
  FUZZ_CHECK(again.name() == wire.name());
  const Manifest reparsed = manifest_from_wire(again);
  FUZZ_CHECK(reparsed.file_id() == manifest.file_id());
  FUZZ_CHECK(reparsed.chunk_hashes == manifest.chunk_hashes);
  // Also through the bytes, as the central server stores and serves it.
  pb::Manifest from_bytes;
  FUZZ_CHECK(from_bytes.ParseFromString(again.SerializeAsString()));
  FUZZ_CHECK(manifest_from_wire(from_bytes).file_id() == manifest.file_id());

  // A partial Announce's bitfield is checked against this manifest's count.
  check_bitfield(wire.name(), count);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Invalid UTF-8 in the name (a proto3 string) makes protobuf log a line
  // per input; the parse failing is the behaviour under test, not news.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 4) return 0;
  const std::uint32_t bits =
      std::uint32_t{data[0]} << 24 | std::uint32_t{data[1]} << 16 | std::uint32_t{data[2]} << 8 | data[3];
  const std::string_view rest(reinterpret_cast<const char*>(data + 4), size - 4);
  check_bitfield(rest, bits);

  pb::Manifest wire;
  if (!wire.ParseFromArray(rest.data(), static_cast<int>(rest.size()))) return 0;
  check_manifest(wire);
  return 0;
}
