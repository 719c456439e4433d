#include <catch2/catch.hpp>

#include "common.pb.h"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/manifest.hpp"
#include "support/temp_dir.hpp"

using namespace p2pshare;

namespace {
Sha256Digest hash_of(const std::string& s) {
  return Sha256::digest(std::span(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()));
}
}  // namespace

TEST_CASE("chunk size rule keeps the hash list bounded") {
  CHECK(choose_chunk_size(0) == kDefaultChunkSize);
  CHECK(choose_chunk_size(1ull << 30) == kDefaultChunkSize);
  CHECK(choose_chunk_size(16ull << 30) == kDefaultChunkSize);  // exactly 65536 chunks
  CHECK(choose_chunk_size((16ull << 30) + 1) == 2 * kDefaultChunkSize);
  CHECK(choose_chunk_size(1ull << 40) == kMaxChunkSize);
  CHECK_THROWS_AS(choose_chunk_size((1ull << 40) + 1), Error);
}

TEST_CASE("manifest at edge sizes") {
  test::TempDir dir;
  const std::uint32_t chunk = kMinChunkSize;
  struct Case {
    std::uint64_t size;
    std::uint32_t chunks;
  };
  for (auto c : {Case{0, 0}, Case{1, 1}, Case{chunk, 1}, Case{chunk + 1, 2}, Case{3ull * chunk, 3}}) {
    const auto path = dir / ("f" + std::to_string(c.size));
    test::write_random_file(path, c.size, c.size + 7);
    const Manifest m = build_manifest(path, 2, chunk);
    CHECK(m.size == c.size);
    CHECK(m.chunk_count() == c.chunks);
    CHECK(m.name == path.filename().string());
    const std::string bytes = test::read_file(path);
    for (std::uint32_t i = 0; i < m.chunk_count(); ++i) {
      const auto len = m.chunk_length(ChunkIndex{i});
      CHECK(m.chunk_hashes[i] == hash_of(bytes.substr(static_cast<std::size_t>(i) * chunk, len)));
    }
    if (c.size == chunk + 1) CHECK(m.chunk_length(ChunkIndex{1}) == 1);
  }
}

TEST_CASE("file id is the canonical encoding, independent of name and threads") {
  test::TempDir dir;
  test::write_random_file(dir / "a.bin", 100000, 3);
  std::filesystem::copy_file(dir / "a.bin", dir / "other-name.bin");
  const Manifest a = build_manifest(dir / "a.bin", 1, kMinChunkSize);
  const Manifest b = build_manifest(dir / "other-name.bin", 4, kMinChunkSize);
  CHECK(a.file_id() == b.file_id());
  CHECK(a.name != b.name);

  // Recompute by hand from docs/protocol.md: "p2pshare-file-v1" || u64be size
  // || u32be chunk_size || u32be chunk_count || hashes.
  std::string canon = "p2pshare-file-v1";
  auto be = [&](std::uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) canon.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  };
  be(a.size, 8);
  be(a.chunk_size, 4);
  be(a.chunk_count(), 4);
  for (const auto& h : a.chunk_hashes) canon.append(reinterpret_cast<const char*>(h.bytes.data()), 32);
  CHECK(a.file_id() == hash_of(canon));

  // The empty file has a well-defined id too.
  test::write_random_file(dir / "empty", 0);
  CHECK(to_hex(build_manifest(dir / "empty").file_id()).size() == 64);
}

TEST_CASE("manifest from the wire checks every field") {
  pb::Manifest wire;
  wire.set_size(3 * kMinChunkSize);
  wire.set_chunk_size(kMinChunkSize);
  wire.set_chunk_hashes(std::string(3 * 32, 'x'));
  wire.set_name("n");
  CHECK(manifest_from_wire(wire).chunk_count() == 3);

  auto bad = wire;
  bad.set_chunk_size(kMinChunkSize + 1);
  CHECK_THROWS_AS(manifest_from_wire(bad), Error);
  bad = wire;
  bad.set_chunk_size(0);
  CHECK_THROWS_AS(manifest_from_wire(bad), Error);
  bad = wire;
  bad.set_chunk_hashes(std::string(2 * 32, 'x'));
  CHECK_THROWS_AS(manifest_from_wire(bad), Error);
  bad = wire;
  bad.set_size(~0ull);  // far over the chunk count limit
  CHECK_THROWS_AS(manifest_from_wire(bad), Error);

  Manifest m = manifest_from_wire(wire);
  pb::Manifest again;
  manifest_to_wire(m, &again);
  CHECK(again.SerializeAsString() == wire.SerializeAsString());
}

TEST_CASE("build_manifest reports missing paths and non-regular files") {
  test::TempDir dir;
  try {
    build_manifest(dir / "missing");
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::not_found);
  }
  try {
    build_manifest(dir.path());
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::bad_request);
  }
}

TEST_CASE("one hash-list codec: round trip, and a wrong length is refused, not guessed") {
  std::vector<Sha256Digest> hashes(3);
  for (std::size_t i = 0; i < hashes.size(); ++i) hashes[i].bytes.fill(static_cast<std::uint8_t>(i + 1));
  const std::string encoded = encode_chunk_hashes(hashes);
  REQUIRE(encoded.size() == 3 * Sha256Digest::kSize);
  const auto bytes = std::span(reinterpret_cast<const std::uint8_t*>(encoded.data()), encoded.size());
  auto decoded = decode_chunk_hashes(bytes, 3);
  REQUIRE(decoded);
  CHECK(*decoded == hashes);

  CHECK_FALSE(decode_chunk_hashes(bytes, 2));
  CHECK_FALSE(decode_chunk_hashes(bytes, 4));
  CHECK_FALSE(decode_chunk_hashes(bytes.first(bytes.size() - 1), 3));
  // A count whose byte length would wrap around is refused before any allocation.
  CHECK_FALSE(decode_chunk_hashes(bytes, ~0ull / Sha256Digest::kSize + 2));
  CHECK(decode_chunk_hashes({}, 0)->empty());
}
