// What downloads leave in their folder, and how names look: a name with a
// bidi control lands on disk without it, and is shown with it made visible.
#include <catch2/catch.hpp>

#include <string>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a name with a bidi control is stripped on disk and made visible on screen", "[e2e]") {
  Cluster c(2);
  // U+202E would show this as "xexe.txt": a program passing for a text file.
  const auto file = c.make_file("x\u202etxt.exe", 3 * kChunkSize + 7, 84);
  const std::string id = c.register_file(0, file);
  REQUIRE(c.wait_holders(id, 1));
  const std::string override_char = "\u202e";
  const std::string replacement = "\ufffd";

  const auto listed = c.on_central("list-files");
  REQUIRE(listed.exit_code == 0);
  CHECK(listed.out.find(override_char) == std::string::npos);
  CHECK(listed.out.find("x" + replacement + "txt.exe") != std::string::npos);
  const auto info = c.on_central("file-info", {"--file-id", id});
  REQUIRE(info.exit_code == 0);
  CHECK(info.out.find(override_char) == std::string::npos);
  CHECK(info.out.find("x" + replacement + "txt.exe") != std::string::npos);
  const auto seeding = c.on_peer(0, "status");
  REQUIRE(seeding.exit_code == 0);
  CHECK(seeding.out.find(override_char) == std::string::npos);

  const auto r = c.on_peer(1, "request-file", {"--file-id", id});
  REQUIRE(r.exit_code == 0);
  const fs::path got = r.out.substr(0, r.out.size() - 1);
  CHECK(got == c.peer(1).download_dir / "xtxt.exe");
  CHECK(files_equal(file, got));
  const auto status = c.on_peer(1, "status");
  REQUIRE(status.exit_code == 0);
  CHECK(status.out.find("xtxt.exe") != std::string::npos);
  CHECK(status.out.find(override_char) == std::string::npos);
}
