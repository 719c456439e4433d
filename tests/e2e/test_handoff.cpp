// Handing a file to someone: a share link and a manifest file made on one
// peer are used by another; a damaged manifest file, a malformed link, a
// link naming another central server, or a link whose name is a path, are
// refused or made harmless, and nothing is written where they point.
#include <catch2/catch.hpp>

#include <fstream>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

std::string first_line(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

void flip_byte(const fs::path& path, std::size_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x04));
}

// The link with parameter `key`'s value replaced.
std::string with_param(const std::string& link, const std::string& key, const std::string& value) {
  const auto at = link.find(key + "=");
  const auto end = link.find('&', at);
  return link.substr(0, at) + key + "=" + value + (end == std::string::npos ? "" : link.substr(end));
}

}  // namespace

TEST_CASE("a share link and a manifest file made on one peer download on another", "[e2e]") {
  Cluster c(2);
  const auto by_link = c.make_file("holiday photos.bin", 5 * kChunkSize + 123, 91);
  const auto by_manifest = c.make_file("notes.bin", 3 * kChunkSize + 9, 92);
  const std::string link_id = c.register_file(0, by_link);
  const std::string manifest_id = c.register_file(0, by_manifest);
  REQUIRE(c.wait_holders(link_id, 1));
  REQUIRE(c.wait_holders(manifest_id, 1));

  const auto share = c.on_peer(0, "share-link", {"--file-id", link_id});
  INFO(describe(share));
  REQUIRE(share.exit_code == 0);
  REQUIRE(lines_of(share.out).size() == 1);
  const std::string link = first_line(share.out);
  CHECK(link.rfind("p2pshare://v1/" + link_id + "?name=holiday%20photos.bin&size=" +
                       std::to_string(fs::file_size(by_link)) + "&central=" + c.central_addr() + "&fp=",
                   0) == 0);

  const auto got = c.on_peer(1, "request-file", {"--link", link, "--json"});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  const auto json = parse_json(got);
  CHECK(json["path"] == (c.peer(1).download_dir / "holiday photos.bin").string());
  CHECK(files_equal(by_link, json["path"].get<std::string>()));

  const auto manifest = c.path("notes.p2ps");
  const auto exported = c.on_peer(0, "export-manifest", {"--file-id", manifest_id, "--out", manifest.string()});
  INFO(describe(exported));
  REQUIRE(exported.exit_code == 0);
  CHECK(first_line(exported.out) == manifest.string());
  const auto fetched = c.on_peer(1, "request-file", {"--manifest", manifest.string()});
  INFO(describe(fetched));
  REQUIRE(fetched.exit_code == 0);
  CHECK(first_line(fetched.out) == (c.peer(1).download_dir / "notes.bin").string());
  CHECK(files_equal(by_manifest, c.peer(1).download_dir / "notes.bin"));
}

TEST_CASE("a damaged manifest file, a bad link or another central's link write nothing", "[e2e]") {
  Cluster c(2);
  const auto file = c.make_file("data.bin", 4 * kChunkSize + 1, 93);
  const std::string id = c.register_file(0, file);
  REQUIRE(c.wait_holders(id, 1));
  const auto out = c.path("out.bin");

  const auto manifest = c.path("data.p2ps");
  REQUIRE(c.on_peer(0, "export-manifest", {"--file-id", id, "--out", manifest.string()}).exit_code == 0);
  const auto size = fs::file_size(manifest);

  // A flipped byte among the chunk hashes, and one in the header.
  for (const std::size_t offset : {std::size_t{size - 80}, std::size_t{50}}) {
    const auto bad = c.path("flipped.p2ps");
    fs::copy_file(manifest, bad, fs::copy_options::overwrite_existing);
    flip_byte(bad, offset);
    const auto r = c.on_peer(1, "request-file", {"--manifest", bad.string(), "--out", out.string()});
    check_fails("flipped byte at " + std::to_string(offset), r, 1, {"flipped.p2ps", "manifest", "checksum"});
    CHECK_FALSE(fs::exists(out));
  }
  // Truncated.
  {
    const auto cut = c.path("cut.p2ps");
    fs::copy_file(manifest, cut);
    fs::resize_file(cut, size - 33);
    check_fails("truncated", c.on_peer(1, "request-file", {"--manifest", cut.string(), "--out", out.string()}), 1,
                {"cut.p2ps", "truncated"});
    check_fails("not a manifest", c.on_peer(1, "request-file", {"--manifest", file.string(), "--out", out.string()}), 1,
                {"magic"});
    CHECK_FALSE(fs::exists(out));
  }

  const std::string link = first_line(c.on_peer(0, "share-link", {"--file-id", id}).out);
  REQUIRE(link.rfind("p2pshare://", 0) == 0);
  // Malformed links: the command line is wrong.
  const std::vector<std::pair<std::string, std::string>> malformed = {
      {"https://example.com/" + id, "p2pshare://"},
      {"p2pshare://v1/" + id.substr(0, 60), "'?'"},
      {with_param(link, "size", "-1"), "size"},
      {with_param(link, "fp", "xyz"), "fp"},
      {with_param(link, "name", "a%zz"), "hex digits"},
      {with_param(link, "central", "nowhere"), "HOST:PORT"},
      {"p2pshare://v9/" + link.substr(std::string("p2pshare://v1/").size()), "version"},
  };
  for (const auto& [text, word] : malformed) {
    check_fails("link " + text, c.on_peer(1, "request-file", {"--link", text, "--out", out.string()}), 2,
                {"link", word});
  }
  check_fails("--link and --file-id", c.on_peer(1, "request-file", {"--link", link, "--file-id", id}), 2,
              {"exactly one"});

  // A link naming a central server with another key: refused, naming both keys.
  const std::string other_fp(64, '7');
  const auto refused =
      c.on_peer(1, "request-file", {"--link", with_param(link, "fp", other_fp), "--out", out.string()});
  check_fails("another central's key", refused, 1, {other_fp, "fingerprint", c.central_addr()});
  CHECK_FALSE(fs::exists(out));
  // A link whose size is not the file's.
  check_fails("wrong size",
              c.on_peer(1, "request-file", {"--link", with_param(link, "size", "7"), "--out", out.string()}), 1,
              {"7 bytes"});
  CHECK_FALSE(fs::exists(out));

  // A link's name is a name, never a path: it lands in the download dir.
  const auto got = c.on_peer(1, "request-file", {"--link", with_param(link, "name", "..%2F..%2Fescaped.bin")});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  const fs::path landed = first_line(got.out);
  CHECK(landed.parent_path() == c.peer(1).download_dir);
  CHECK(files_equal(file, landed));
  CHECK_FALSE(fs::exists(c.root() / "escaped.bin"));
}
