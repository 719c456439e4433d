// File names are bytes on Linux but UTF-8 on the wire: a name that is not
// valid UTF-8 still registers, travels with its stray bytes replaced, and
// the downloaded copy lands under that safe name in the download dir.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a file whose name is not UTF-8 registers and downloads under a safe name", "[e2e]") {
  Cluster c(2);
  const auto file = c.make_file(std::string("caf\xe9 menu.bin"), 3 * kChunkSize + 5, 51);
  const auto reg = c.on_peer(0, "register-file", {"--path", file.string(), "--json"});
  REQUIRE(reg.exit_code == 0);
  const auto info = parse_json(reg);
  CHECK(info["name"].get<std::string>() == "caf\xef\xbf\xbd menu.bin");
  const std::string id = info["file_id"].get<std::string>();
  REQUIRE(c.wait_holders(id, 1));
  const auto r = c.on_peer(1, "request-file", {"--file-id", id});
  REQUIRE(r.exit_code == 0);
  const fs::path got = r.out.substr(0, r.out.size() - 1);
  CHECK(got == c.peer(1).download_dir / "caf\xef\xbf\xbd menu.bin");
  CHECK(files_equal(file, got));
}
