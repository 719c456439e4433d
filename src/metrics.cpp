#include "p2pshare/metrics.hpp"

#include <cmath>

#include <fmt/format.h>

namespace p2pshare::metrics {

void Histogram::observe(double seconds) noexcept {
  if (!(seconds >= 0)) seconds = 0;  // NaN or negative: a clock oddity, counted as 0
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      buckets_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_micros_.fetch_add(static_cast<std::uint64_t>(std::llround(seconds * 1e6)), std::memory_order_relaxed);
}

void MetricsText::counter(std::string_view name, std::string_view help, std::uint64_t value) {
  text_ += fmt::format("# HELP {0} {1}\n# TYPE {0} counter\n{0} {2}\n", name, help, value);
}

void MetricsText::gauge(std::string_view name, std::string_view help, double value) {
  text_ += fmt::format("# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}\n", name, help, value);
}

void MetricsText::histogram(std::string_view name, std::string_view help, const Histogram& histogram) {
  text_ += fmt::format("# HELP {0} {1}\n# TYPE {0} histogram\n", name, help);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < Histogram::kBounds.size(); ++i) {
    cumulative += histogram.buckets_[i].load(std::memory_order_relaxed);
    text_ += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, Histogram::kBounds[i], cumulative);
  }
  // +Inf is the count itself, so the buckets never exceed it even while
  // another thread observes mid-scrape.
  const std::uint64_t count = std::max(cumulative, histogram.count());
  text_ += fmt::format("{0}_bucket{{le=\"+Inf\"}} {1}\n{0}_sum {2}\n{0}_count {1}\n", name, count,
                       static_cast<double>(histogram.sum_micros_.load(std::memory_order_relaxed)) / 1e6);
}

}  // namespace p2pshare::metrics
