// Tells the Cluster helper when an assertion of the running test failed, so
// that it prints the servers' logs (ctest --output-on-failure shows them).
// Compiled into both the e2e and the slow test executables.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <catch2/catch.hpp>

#include "support/cluster.hpp"

namespace {

struct FailureListener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  // What counts is this test case's failures, not an earlier one's.
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    TestEventListenerBase::testCaseStarting(info);
    p2pshare::test::e2e_failure_seen() = false;
  }
  bool assertionEnded(const Catch::AssertionStats& stats) override {
    if (!stats.assertionResult.succeeded()) p2pshare::test::e2e_failure_seen() = true;
    return true;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(FailureListener)
