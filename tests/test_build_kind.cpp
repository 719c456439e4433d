// The tests' own idea of a sanitizer build (support/build_kind.hpp) agrees
// with the flags CMake compiled them with: otherwise the sanitizer stages
// would run wall-clock assertions, or release would silently skip them.
#include <catch2/catch.hpp>

#include "support/build_kind.hpp"

TEST_CASE("support: timing assertions run exactly when no sanitizer is compiled in", "[support]") {
  CHECK(p2pshare::test::kSanitizerBuild == (P2PSHARE_FLAGS_SANITIZE != 0));
  CHECK(p2pshare::test::kTimingAsserted == (P2PSHARE_FLAGS_SANITIZE == 0));
}
