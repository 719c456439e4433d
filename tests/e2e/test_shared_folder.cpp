// What downloads leave in their folder, and how names look. Several
// peer-servers on one machine downloading the same file into one folder at
// once each keep their own partial file (an advisory lock says whose it is),
// so all of them finish and nothing is left behind. A name with a bidi
// control lands on disk without it, and is shown with it made visible.
#include <catch2/catch.hpp>

#include <algorithm>
#include <memory>
#include <set>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("three peer-servers download the same file into one folder at once", "[e2e]") {
  Cluster c(3);
  // 40 chunks; the seed's upload limit stretches the downloads over a second
  // or more, so the three overlap for certain.
  const auto file = c.make_file("shared.bin", 40 * kChunkSize, 83);
  const std::string id = c.add_seed(file, "6M");  // peer3
  REQUIRE(c.wait_holders(id, 1));

  const fs::path folder = c.path("shared-downloads");
  fs::create_directories(folder);
  const std::vector<std::string> names{"d0.bin", "d1.bin", "d2.bin"};
  std::vector<std::unique_ptr<Process>> requests;
  for (std::size_t i = 0; i < names.size(); ++i) {
    requests.push_back(std::make_unique<Process>(
        std::vector<std::string>{binary(), "request-file", "--file-id", id, "--out", (folder / names[i]).string(),
                                 "--peer-addr", c.peer(i).addr, "--data-dir", c.peer(i).data_dir.string()},
        c.logs()));
  }
  for (std::size_t i = 0; i < names.size(); ++i) {
    const auto code = requests[i]->wait(90s);
    INFO(names[i] << ": stdout [" << requests[i]->out() << "] stderr [" << requests[i]->err() << "]");
    CHECK(code == 0);
    CHECK(files_equal(file, folder / names[i]));
  }
  std::set<std::string> left;
  for (const auto& entry : fs::directory_iterator(folder)) left.insert(entry.path().filename().string());
  CHECK(left == std::set<std::string>(names.begin(), names.end()));
}

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
