// The token bucket on a real io_context and the real clock.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include <asio.hpp>

#include "p2pshare/rate.hpp"
#include "support/build_kind.hpp"

using namespace std::chrono_literals;
using p2pshare::TokenBucket;
using p2pshare::test::kTimingAsserted;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Runs `io` until `done` holds or `timeout` passes.
bool run_until(asio::io_context& io, const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() >= deadline) return false;
    if (io.stopped()) io.restart();
    io.run_one_for(10ms);
  }
  return true;
}

}  // namespace

TEST_CASE("TokenBucket at rate 0 lets everything through at once", "[rate]") {
  asio::io_context io;
  auto bucket = std::make_shared<TokenBucket>(io, 0);
  CHECK(bucket->rate() == 0);
  int passed = 0;
  const auto start = Clock::now();
  for (int i = 0; i < 1000; ++i) bucket->acquire(1 << 30, [&] { ++passed; });
  CHECK(passed == 1000);  // synchronously, without running the io_context
  if (kTimingAsserted) CHECK(seconds_between(start, Clock::now()) < 0.5);
}

TEST_CASE("TokenBucket holds 1 MiB/s within 10% over a second of 64 KiB blocks", "[rate]") {
  asio::io_context io;
  constexpr std::uint64_t kRate = 1 << 20;
  constexpr std::size_t kBlock = 64 * 1024;
  constexpr int kBlocks = 17;  // 16 blocks (1 MiB) are paid for when the 17th passes
  auto bucket = std::make_shared<TokenBucket>(io, kRate);
  CHECK(bucket->rate() == kRate);

  // One sender: asks for the next block when the previous one may go.
  std::vector<Clock::time_point> passed_at;
  std::function<void()> next = [&] {
    passed_at.push_back(Clock::now());
    if (passed_at.size() < kBlocks) bucket->acquire(kBlock, next);
  };
  const auto start = Clock::now();
  bucket->acquire(kBlock, next);
  REQUIRE(run_until(
      io, [&] { return passed_at.size() == kBlocks; }, 3s));

  // Up to a tenth of a second of burst is allowed at the start; the rest is
  // paid for at the rate.
  const double burst_bytes = static_cast<double>(kRate) / 10;
  const double expected = (static_cast<double>(kBlocks - 1) * kBlock - burst_bytes) / kRate;  // 0.9 s
  const double took = seconds_between(start, passed_at.back());
  INFO("took " << took << " s, expected " << expected << " s");
  if (kTimingAsserted) {
    CHECK(took >= expected * 0.9);
    CHECK(took <= expected * 1.1);
  }

  // Steady state, once the burst is spent (block 2 on): exactly the rate.
  const double window = seconds_between(passed_at[2], passed_at.back());
  const double steady_rate = static_cast<double>(kBlocks - 1 - 2) * kBlock / window;
  INFO("steady rate " << steady_rate << " B/s");
  if (kTimingAsserted) {
    CHECK(steady_rate >= kRate * 0.9);
    CHECK(steady_rate <= kRate * 1.1);
  }

  // Never ahead of the rate plus the burst: block k (0-based) may pass only
  // once (k * block - burst) bytes' worth of time has gone by.
  for (std::size_t k = 2; k < passed_at.size(); ++k) {
    const double earliest = (static_cast<double>(k) * kBlock - burst_bytes) / kRate;
    INFO("block " << k);
    if (kTimingAsserted) CHECK(seconds_between(start, passed_at[k]) >= earliest * 0.95);
  }
}

TEST_CASE("TokenBucket lets a block bigger than the bucket through and makes the next waiter pay", "[rate]") {
  asio::io_context io;
  constexpr std::uint64_t kRate = 1 << 20;
  auto bucket = std::make_shared<TokenBucket>(io, kRate);
  bool big = false;
  bucket->acquire(300 * 1024, [&] { big = true; });
  CHECK(big);  // a full bucket lets it through at once, into debt
  bool small = false;
  const auto start = Clock::now();
  bucket->acquire(1, [&] { small = true; });
  CHECK_FALSE(small);
  REQUIRE(run_until(
      io, [&] { return small; }, 2s));
  const double waited = seconds_between(start, Clock::now());
  // Debt: 300 KiB - 0.1 MiB of burst = ~0.193 s at 1 MiB/s.
  const double expected = (300.0 * 1024 - kRate / 10.0) / kRate;
  INFO("waited " << waited << " s, expected " << expected << " s");
  if (kTimingAsserted) {
    CHECK(waited >= expected * 0.9);
    CHECK(waited <= expected * 1.1 + 0.02);
  }
}

TEST_CASE("TokenBucket runs waiting callbacks in FIFO order", "[rate]") {
  asio::io_context io;
  auto bucket = std::make_shared<TokenBucket>(io, 1 << 20);
  std::vector<int> order;
  // The first drives the bucket into debt; the small ones after it must not overtake.
  const std::size_t sizes[] = {150000, 1, 40000, 1, 20000, 5, 1};
  for (int i = 0; i < 7; ++i) bucket->acquire(sizes[i], [&order, i] { order.push_back(i); });
  CHECK(order == std::vector<int>{0});
  // One more arrives while the others wait: it goes last.
  bucket->acquire(1, [&order] { order.push_back(7); });
  REQUIRE(run_until(
      io, [&] { return order.size() == 8; }, 2s));
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
}

TEST_CASE("TokenBucket keeps FIFO order when callbacks acquire again", "[rate]") {
  asio::io_context io;
  auto bucket = std::make_shared<TokenBucket>(io, 4 << 20);
  std::vector<int> order;
  // Two senders alternate, each re-acquiring from its callback.
  int a_left = 5;
  int b_left = 5;
  std::function<void()> a = [&] {
    order.push_back(0);
    if (--a_left > 0) bucket->acquire(100000, a);
  };
  std::function<void()> b = [&] {
    order.push_back(1);
    if (--b_left > 0) bucket->acquire(100000, b);
  };
  bool primed = false;
  bucket->acquire(500000, [&] { primed = true; });  // into debt at once
  REQUIRE(primed);
  bucket->acquire(100000, a);
  bucket->acquire(100000, b);
  CHECK(order.empty());
  REQUIRE(run_until(
      io, [&] { return order.size() == 10; }, 2s));
  CHECK(order == std::vector<int>{0, 1, 0, 1, 0, 1, 0, 1, 0, 1});
}
