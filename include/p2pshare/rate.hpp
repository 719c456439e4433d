// A token bucket shared by every connection of a peer-server: one for upload,
// one for download. Bytes pass when the bucket is not in debt; a chunk larger
// than the bucket drives it into debt, which later waiters pay off, so the
// long-run rate is exact whatever the chunk size.
//
// Threading: acquire() and the callbacks run on the io_context's one thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>

#include <asio.hpp>

#include "p2pshare/wire.hpp"

namespace p2pshare {

class TokenBucket : public wire::Throttle, public std::enable_shared_from_this<TokenBucket> {
 public:
  // bytes_per_second 0 = unlimited.
  TokenBucket(asio::io_context& io, std::uint64_t bytes_per_second);
  void acquire(std::size_t bytes, std::function<void()> go) override;
  std::uint64_t rate() const { return rate_; }

 private:
  void refill();
  void drain();

  asio::steady_timer timer_;
  std::uint64_t rate_;
  double tokens_;
  double capacity_;
  std::chrono::steady_clock::time_point last_;
  struct Waiter {
    std::size_t bytes;
    std::function<void()> go;
  };
  std::deque<Waiter> waiters_;
  bool timer_armed_ = false;
};

}  // namespace p2pshare
