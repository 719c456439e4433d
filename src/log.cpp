#include "p2pshare/log.hpp"

#include <chrono>
#include <cstdio>
#include <mutex>

#include "p2pshare/cli.hpp"

namespace p2pshare::log {
namespace {
std::atomic<Level> g_level{Level::info};
std::mutex g_mutex;
constexpr const char* kNames[] = {"debug", "info", "warn", "error"};
}  // namespace

void set_level(Level l) {
  g_level = l;
}
Level level() {
  return g_level;
}

void write(Level l, std::string_view text) {
  const std::string line =
      fmt::format("{} {} {}\n", cli::rfc3339(std::chrono::system_clock::now()), kNames[static_cast<int>(l)], text);
  std::lock_guard lock(g_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace p2pshare::log
