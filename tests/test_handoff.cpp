// The share link and the .p2ps manifest file: what goes in comes out, and
// every kind of damage is refused with a message saying which.
#include <catch2/catch.hpp>

#include <cstring>
#include <string>

#include "p2pshare/error.hpp"
#include "p2pshare/handoff.hpp"
#include "p2pshare/hash.hpp"

using namespace p2pshare;
using namespace p2pshare::handoff;

namespace {

Manifest sample_manifest(std::uint64_t size = 3 * kMinChunkSize + 5) {
  Manifest m;
  m.size = size;
  m.chunk_size = kMinChunkSize;
  for (std::uint64_t i = 0; i < chunk_count_for(size, m.chunk_size); ++i) {
    Sha256Digest d;
    d.bytes.fill(static_cast<std::uint8_t>(i + 1));
    m.chunk_hashes.push_back(d);
  }
  m.name = "holiday photos & notes/ü.tar";
  return m;
}

ShareLink sample_link() {
  ShareLink link;
  link.file_id = sample_manifest().file_id();
  link.name = "holiday photos & notes/ü?.tar";
  link.size = 49157;
  link.central = "[::1]:7070";
  link.central_fingerprint.fill(0xab);
  return link;
}

std::string decode_error(const std::string& text) {
  try {
    (void)decode_link(text);
  } catch (const Error& e) {
    CHECK(e.code() == Errc::usage);
    return e.what();
  }
  return "decoded";
}

ManifestFile sample_file() {
  ManifestFile f;
  f.manifest = sample_manifest();
  f.central = "127.0.0.1:7070";
  f.central_fingerprint.fill(0x5a);
  return f;
}

std::string file_error(const std::string& bytes) {
  try {
    (void)decode_manifest_file(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  } catch (const Error& e) {
    CHECK(e.code() == Errc::verification);
    return e.what();
  }
  return "decoded";
}

}  // namespace

TEST_CASE("a share link round-trips, with its name percent-encoded", "[handoff]") {
  const auto link = sample_link();
  const std::string text = encode_link(link);
  CHECK(text.rfind("p2pshare://v1/" + to_hex(link.file_id) + "?name=holiday%20photos%20%26%20notes%2F%C3%BC%3F.tar",
                   0) == 0);
  CHECK(text.find("&central=[::1]:7070&") != std::string::npos);
  CHECK(decode_link(text) == link);
  // The scheme is case-insensitive, percent escapes take either case, and
  // the order of the parameters is free.
  ShareLink again = decode_link("P2PSHARE://v1/" + to_hex(link.file_id) + "?fp=" +
                                [] {
                                  std::string fp;
                                  for (int i = 0; i < 32; ++i) fp += "AB";
                                  return fp;
                                }() +
                                "&central=%5B::1%5d:7070&size=49157&name=" + percent_encode(link.name));
  CHECK(again == link);
}

TEST_CASE("a malformed link is refused, saying why", "[handoff]") {
  const std::string good = encode_link(sample_link());
  const std::string id = to_hex(sample_link().file_id);
  const std::string rest = "&size=1&central=h:1&fp=" + std::string(64, '0');
  CHECK(decode_error("http://v1/" + id) == "malformed link: it does not start with p2pshare://");
  CHECK_THAT(decode_error("p2pshare://v2/" + id + "?name=a" + rest), Catch::Contains("version v2 is not supported"));
  CHECK_THAT(decode_error("p2pshare://" + id), Catch::Contains("v1/FILE-ID"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id.substr(1) + "?name=a" + rest), Catch::Contains("64 hex digits"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id), Catch::Contains("no '?'"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a%2" + rest), Catch::Contains("two hex digits"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a%zz" + rest), Catch::Contains("two hex digits"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a b" + rest), Catch::Contains("percent-encoded"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=" + rest), Catch::Contains("name is empty"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=%FF" + rest), Catch::Contains("not UTF-8"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&name=b" + rest), Catch::Contains("twice"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&extra=1" + rest), Catch::Contains("unknown parameter"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&size=01&central=h:1&fp=" + std::string(64, '0')),
             Catch::Contains("size"));
  CHECK_THAT(
      decode_error("p2pshare://v1/" + id + "?name=a&size=99999999999999999999&central=h:1&fp=" + std::string(64, '0')),
      Catch::Contains("size"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&size=1&central=nohost&fp=" + std::string(64, '0')),
             Catch::Contains("HOST:PORT"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&size=1&central=h%1B:1&fp=" + std::string(64, '0')),
             Catch::Contains("HOST:PORT"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&size=1&central=h:1&fp=abc"), Catch::Contains("fp"));
  CHECK_THAT(decode_error("p2pshare://v1/" + id + "?name=a&size=1&central=h:1"), Catch::Contains("no fingerprint"));
  CHECK_THAT(decode_error(good + "#x"), Catch::Contains("'#'"));
  CHECK_THAT(decode_error(good + "&name=" + std::string(kMaxLinkLength, 'a')), Catch::Contains("longer than"));
}

TEST_CASE("a manifest file round-trips", "[handoff]") {
  const auto f = sample_file();
  const std::string bytes = encode_manifest_file(f);
  CHECK(bytes.substr(0, 8) == std::string("p2psman\n"));
  CHECK(bytes.size() == 96 + f.central.size() + f.manifest.name.size() + 32 * f.manifest.chunk_count() + 32);
  const auto back = decode_manifest_file(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  CHECK(back.manifest.file_id() == f.manifest.file_id());
  CHECK(back.manifest.name == f.manifest.name);
  CHECK(back.central == f.central);
  CHECK(back.central_fingerprint == f.central_fingerprint);
  // An empty file has no chunks and still a manifest.
  auto empty = f;
  empty.manifest = sample_manifest(0);
  const std::string empty_bytes = encode_manifest_file(empty);
  CHECK(decode_manifest_file(std::span(reinterpret_cast<const std::uint8_t*>(empty_bytes.data()), empty_bytes.size()))
            .manifest.file_id() == empty.manifest.file_id());
}

TEST_CASE("every byte of a manifest file is covered: a flipped one is refused", "[handoff]") {
  const std::string bytes = encode_manifest_file(sample_file());
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    INFO("byte " << i);
    CHECK(file_error(bad) != "decoded");
  }
  CHECK_THAT(file_error(bytes.substr(0, bytes.size() - 1)), Catch::Contains("truncated"));
  CHECK_THAT(file_error(bytes.substr(0, 50)), Catch::Contains("truncated"));
  CHECK_THAT(file_error(bytes + "x"), Catch::Contains("after its end"));
  CHECK_THAT(file_error("PK\x03\x04 not a manifest"), Catch::Contains("magic"));
  std::string flipped = bytes;
  flipped[200] = static_cast<char>(flipped[200] ^ 0x80);
  CHECK_THAT(file_error(flipped), Catch::Contains("checksum"));
}

TEST_CASE("a manifest file whose id its hashes do not give is refused, checksum or not", "[handoff]") {
  std::string bytes = encode_manifest_file(sample_file());
  bytes[12] = static_cast<char>(bytes[12] ^ 0xff);  // the stored file id
  // A consistent checksum: only the id is wrong.
  const auto sum = Sha256::digest(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size() - 32));
  std::memcpy(bytes.data() + bytes.size() - 32, sum.bytes.data(), 32);
  CHECK_THAT(file_error(bytes), Catch::Contains("is not the one its chunk hashes give"));
}
