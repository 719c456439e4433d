// The tests' own idea of a sanitizer build (support/build_kind.hpp) agrees
// with the flags CMake compiled them with: otherwise the sanitizer stages
// would run wall-clock assertions, or release would silently skip them.
#include <catch2/catch.hpp>

#include "support/build_kind.hpp"
#include "support/process.hpp"
#include "support/temp_dir.hpp"

TEST_CASE("support: timing assertions run exactly when no sanitizer is compiled in", "[support]") {
  CHECK(p2pshare::test::kSanitizerBuild == (P2PSHARE_FLAGS_SANITIZE != 0));
  CHECK(p2pshare::test::kTimingAsserted == (P2PSHARE_FLAGS_SANITIZE == 0));
}

TEST_CASE("support: a child's sanitizer report is collected when its Process ends, and nothing else is", "[support]") {
  using p2pshare::test::Process;
  using p2pshare::test::take_sanitizer_reports;
  p2pshare::test::TempDir dir;
  REQUIRE(take_sanitizer_reports().empty());
  {
    // What a server prints: log lines, an ordinary error that mentions none of the marks.
    Process quiet({"/bin/sh", "-c", "echo 'warn central: the database is unavailable' >&2"}, dir.path());
    REQUIRE(quiet.wait() == 0);
  }
  CHECK(take_sanitizer_reports().empty());
  for (const std::string mark :
       {"==1==ERROR: AddressSanitizer: heap-use-after-free on address 0x1",
        "WARNING: ThreadSanitizer: data race (pid=1)", "src/x.cpp:1:2: runtime error: signed integer overflow",
        "==1==ERROR: LeakSanitizer: detected memory leaks"}) {
    {
      Process reporting({"/bin/sh", "-c", "echo 'a log line' >&2; echo \"$0\" >&2", mark}, dir.path());
      REQUIRE(reporting.wait() == 0);
    }
    const auto reports = take_sanitizer_reports();
    REQUIRE(reports.size() == 1);
    INFO(reports.front());
    // The command, then the stderr from the report's own line on.
    const std::string text = reports.front().substr(reports.front().find('\n') + 1);
    CHECK(text.find(mark) == 0);
    CHECK(text.find("a log line") == std::string::npos);
  }
}
