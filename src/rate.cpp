#include "p2pshare/rate.hpp"

#include <algorithm>

namespace p2pshare {

TokenBucket::TokenBucket(asio::io_context& io, std::uint64_t bytes_per_second)
    : timer_(io),
      rate_(bytes_per_second),
      // A tenth of a second of burst: small enough that "accurate within 10%
      // over a few seconds" holds from the start.
      tokens_(static_cast<double>(bytes_per_second) / 10),
      capacity_(static_cast<double>(bytes_per_second) / 10),
      last_(std::chrono::steady_clock::now()) {}

void TokenBucket::refill() {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - last_).count();
  last_ = now;
  tokens_ = std::min(capacity_, tokens_ + elapsed * static_cast<double>(rate_));
}

void TokenBucket::acquire(std::size_t bytes, std::function<void()> go) {
  if (rate_ == 0) {
    go();
    return;
  }
  waiters_.push_back({bytes, std::move(go)});
  if (waiters_.size() == 1) drain();
}

void TokenBucket::drain() {
  refill();
  // Waiters pass in order while the bucket is out of debt.
  while (!waiters_.empty() && tokens_ >= 0) {
    Waiter w = std::move(waiters_.front());
    waiters_.pop_front();
    tokens_ -= static_cast<double>(w.bytes);
    w.go();
  }
  if (waiters_.empty() || timer_armed_) return;
  const double wait_s = -tokens_ / static_cast<double>(rate_);
  timer_armed_ = true;
  timer_.expires_after(std::chrono::microseconds(static_cast<std::int64_t>(wait_s * 1e6) + 1));
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    self->timer_armed_ = false;
    if (!ec) self->drain();
  });
}

}  // namespace p2pshare
