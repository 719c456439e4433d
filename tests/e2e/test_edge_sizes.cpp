// Sizes at the chunk edges, end to end: register on one peer, fetch on another.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

void round_trip(Cluster& c, std::uint64_t size) {
  INFO("size " << size);
  const auto name = "edge-" + std::to_string(size) + ".bin";
  const auto src = c.make_file(name, size, 100 + size);

  const auto reg = c.on_peer(0, "register-file", {"--path", src.string(), "--json"});
  INFO(describe(reg));
  REQUIRE(reg.exit_code == 0);
  const auto j = parse_json(reg);
  const std::string id = j.value("file_id", "");
  REQUIRE(is_file_id(id));
  CHECK(j["name"] == name);
  CHECK(j["size"] == size);
  CHECK(j["chunk_size"] == kChunkSize);
  if (size > 0) {
    CHECK(j["chunks"] == chunks_for(size));
  } else {
    CHECK(j["chunks"].get<std::uint64_t>() <= 1);  // the contract leaves 0 or 1 open
  }
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("out") / name;
  // A deadline well past what a few hundred KiB on loopback need: a hang fails fast.
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 10s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto got = parse_json(r);
  CHECK(got["path"] == out.string());
  CHECK(got["size"] == size);
  CHECK(got["bytes_received"].get<std::uint64_t>() >= size);
  REQUIRE(fs::exists(out));
  CHECK(fs::file_size(out) == size);
  CHECK(files_equal(src, out));
}

}  // namespace

// A 0-byte file has no chunks: the download must still create it and answer.
TEST_CASE("edge sizes download intact: 0 bytes", "[e2e]") {
  Cluster c(2);
  round_trip(c, 0);
}

TEST_CASE("edge sizes download intact: 1 byte", "[e2e]") {
  Cluster c(2);
  round_trip(c, 1);
}

TEST_CASE("edge sizes download intact: exactly one chunk and one chunk + 1 byte", "[e2e]") {
  Cluster c(2);
  round_trip(c, kChunkSize);
  round_trip(c, kChunkSize + 1);
}
