// What kind of build the tests run in, for the few assertions that only hold
// in an optimised build on a quiet machine: elapsed times and rates measured
// on the wall clock, and memory bounds.
//
// ASan/UBSan and TSan slow the code several times over and run on a machine
// shared with other jobs, so a wall-clock bound there fails for reasons that
// are not bugs. In sanitizer builds those assertions are skipped (guard them
// with `if (kTimingAsserted)`); the functional assertions next to them (exit
// codes, bytes, the reason a connection closed) run in every build. The
// release stage asserts every figure.
#pragma once

#include <cstdint>

// GCC defines __SANITIZE_*__; clang answers __has_feature.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define P2PSHARE_SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define P2PSHARE_SANITIZER_BUILD 1
#endif
#endif

namespace p2pshare::test {

#ifdef P2PSHARE_SANITIZER_BUILD
inline constexpr bool kSanitizerBuild = true;
#else
inline constexpr bool kSanitizerBuild = false;
#endif

// Whether assertions on wall-clock time and rates run in this build.
inline constexpr bool kTimingAsserted = !kSanitizerBuild;

// The binary under test is built with the tests. ASan's shadow memory and
// its quarantine of freed blocks (256 MiB by default) inflate resident memory
// several times over, and TSan's shadow even more; a memory bound measured in
// a release build is scaled by this factor in sanitizer builds. The bound
// still catches growth with the load (a million requests), which is what the
// tests look for.
inline constexpr std::uint64_t kMemoryBoundFactor = kSanitizerBuild ? 8 : 1;

}  // namespace p2pshare::test
