// Logging for the servers: one line per event on stderr with a UTC timestamp
// and level, through fmt. Deliberately tiny: the servers log little (start,
// stop, peers misbehaving, disk trouble), and stdout is reserved for the
// "listening on" line and command output.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <string_view>

namespace p2pshare::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };
void set_level(Level level);
Level level();
void write(Level level, std::string_view text);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace p2pshare::log
