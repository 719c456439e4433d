// File identity: the id depends on the bytes alone.
#include <catch2/catch.hpp>

#include <fstream>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("the same bytes under two names and on two peers give one file id and other bytes another", "[e2e]") {
  Cluster c(2);
  const std::uint64_t size = kChunkSize * 2 + 99;
  const auto first = c.make_file("first.dat", size, 42);
  const auto second = c.make_file("second-name.iso", size, 42);
  const auto other = c.make_file("first.dat", size, 43, "other");  // same name, other bytes
  // One byte different in the last chunk only.
  const auto tweaked = c.files() / "tweaked.dat";
  fs::copy_file(first, tweaked);
  {
    std::fstream f(tweaked, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(size - 1));
    char ch = 0;
    f.get(ch);
    f.seekp(static_cast<std::streamoff>(size - 1));
    f.put(static_cast<char>(ch ^ 1));
  }

  // register-file prints the id alone on a line.
  const auto plain = c.on_peer(0, "register-file", {"--path", first.string()});
  INFO(describe(plain));
  REQUIRE(plain.exit_code == 0);
  REQUIRE(plain.out.size() == 65);
  CHECK(plain.out.back() == '\n');
  const std::string id = plain.out.substr(0, 64);
  CHECK(is_file_id(id));
  CHECK(plain.err.empty());

  // register-file --json carries the contract's fields.
  const auto r = c.on_peer(0, "register-file", {"--path", second.string(), "--json"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto j = parse_json(r);
  CHECK(j["file_id"] == id);
  CHECK(j["name"] == "second-name.iso");
  CHECK(j["size"] == size);
  CHECK(j["chunk_size"] == kChunkSize);
  CHECK(j["chunks"] == 3);

  CHECK(c.register_file(1, second) == id);
  const std::string other_id = c.register_file(1, other);
  const std::string tweaked_id = c.register_file(1, tweaked);
  CHECK(is_file_id(other_id));
  CHECK(other_id != id);
  CHECK(tweaked_id != id);
  CHECK(tweaked_id != other_id);

  // The central server knows three files, the shared one held by both peers.
  REQUIRE(wait_for([&] { return c.list_files().size() == 3 && c.holders(id) == 2; }));
  CHECK(c.holders(other_id) == 1);
  CHECK(c.holders(tweaked_id) == 1);
}
