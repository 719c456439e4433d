// SIGINT and SIGTERM end both servers cleanly (exit 0) and promptly.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

// Exit status 0 (the servers' 10 s shutdown watchdog would exit 1), within
// 3 s. The wait outlasts the watchdog, so that a hung shutdown shows as its
// exit 1 rather than as a timeout of the test.
void check_stops(Node& node, int sig) {
  INFO(node.name << " on signal " << sig);
  const auto start = std::chrono::steady_clock::now();
  const auto code = Cluster::stop(node, sig, std::chrono::seconds(15));
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  INFO("took " << took.count() << " ms");
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  if (kTimingAsserted) CHECK(took < std::chrono::seconds(3));
}

void graceful(int sig, bool central_first) {
  Cluster c(1);
  const std::string id = c.register_file(0, c.make_file("x.bin", kChunkSize + 1, 31));
  REQUIRE(c.wait_holders(id, 1));
  if (central_first) {
    check_stops(c.central(), sig);
    check_stops(c.peer(0), sig);
  } else {
    check_stops(c.peer(0), sig);
    check_stops(c.central(), sig);
  }
}

}  // namespace

TEST_CASE("SIGTERM stops a peer-server and then the central server with exit 0", "[e2e]") {
  graceful(SIGTERM, false);
}
TEST_CASE("SIGINT stops a peer-server and then the central server with exit 0", "[e2e]") {
  graceful(SIGINT, false);
}
TEST_CASE("SIGTERM stops the central server while a peer is connected and then the peer with exit 0", "[e2e]") {
  graceful(SIGTERM, true);
}
TEST_CASE("SIGINT stops the central server while a peer is connected and then the peer with exit 0", "[e2e]") {
  graceful(SIGINT, true);
}
