// Counters and histograms for /metrics, and the writer of the Prometheus
// text exposition format (version 0.0.4) they are scraped in.
//
// Threading: Counter and Histogram may be bumped from any thread (relaxed
// atomics: a scrape sees each value whole, not a snapshot of all of them);
// a MetricsText is one scrape's, on one thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>

namespace p2pshare::metrics {

class Counter {
 public:
  void add(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

// Seconds, in fixed buckets from 100 us to 10 s (and +Inf).
class Histogram {
 public:
  static constexpr std::array<double, 11> kBounds{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0};
  void observe(double seconds) noexcept;
  std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  friend class MetricsText;
  std::array<std::atomic<std::uint64_t>, kBounds.size()> buckets_{};  // not cumulative
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_micros_{0};
};

// One scrape: every family once, with its HELP and TYPE lines.
class MetricsText {
 public:
  void counter(std::string_view name, std::string_view help, std::uint64_t value);
  void gauge(std::string_view name, std::string_view help, double value);
  void histogram(std::string_view name, std::string_view help, const Histogram& histogram);
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

}  // namespace p2pshare::metrics
