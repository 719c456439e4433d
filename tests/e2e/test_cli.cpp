#include <catch2/catch.hpp>

#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace p2pshare::test;

TEST_CASE("the binary prints its version") {
  TempDir dir;
  auto r = run({P2PSHARE_BINARY, "--version"}, dir.path());
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("p2pshare") != std::string::npos);
}
