#include "p2pshare/cli.hpp"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <optional>

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare::cli {

std::string Address::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Address parse_address(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Error(Errc::usage, fmt::format("malformed address '{}': {} (expected HOST:PORT)", text, why));
  };
  Address address;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) throw bad("missing ']'");
    address.host = std::string(text.substr(1, close - 1));
    if (close + 1 >= text.size() || text[close + 1] != ':') throw bad("missing ':PORT'");
    port_text = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) throw bad("missing ':PORT'");
    address.host = std::string(text.substr(0, colon));
    if (address.host.find(':') != std::string::npos) throw bad("IPv6 hosts go in brackets");
    port_text = text.substr(colon + 1);
  }
  if (address.host.empty()) throw bad("empty host");
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port_text.empty() || port > 65535) {
    throw bad("port must be a number from 0 to 65535");
  }
  address.port = static_cast<std::uint16_t>(port);
  return address;
}

std::vector<Address> parse_address_list(std::string_view text, std::string_view flag) {
  std::vector<Address> addresses;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    std::string_view item =
        text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (item.empty()) {
      throw Error(Errc::usage, fmt::format("{} '{}': an empty item (expected HOST:PORT,HOST:PORT,...)", flag, text));
    }
    if (addresses.size() == kMaxCentralAddresses) {
      throw Error(Errc::usage, fmt::format("{}: at most {} addresses", flag, kMaxCentralAddresses));
    }
    Address address = parse_address(item);
    for (const auto& earlier : addresses) {
      if (earlier.host == address.host && earlier.port == address.port) {
        throw Error(Errc::usage, fmt::format("{}: {} is listed twice", flag, address.to_string()));
      }
    }
    addresses.push_back(std::move(address));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return addresses;
}

std::string to_string(const std::vector<Address>& addresses) {
  std::string out;
  for (const auto& a : addresses) {
    if (!out.empty()) out += ',';
    out += a.to_string();
  }
  return out;
}

namespace {

// A count with an optional binary suffix (K, M, G, and T when `tera`), as
// rates and sizes are written; nullopt if malformed or past 2^64.
std::optional<std::uint64_t> parse_scaled(std::string_view text, bool tera) {
  if (text.empty()) return std::nullopt;
  int shift = 0;
  switch (text.back()) {
    case 'K':
    case 'k':
      shift = 10;
      break;
    case 'M':
    case 'm':
      shift = 20;
      break;
    case 'G':
    case 'g':
      shift = 30;
      break;
    case 'T':
    case 't':
      shift = tera ? 40 : 0;
      break;
    default:
      break;
  }
  if (shift != 0) text.remove_suffix(1);
  std::uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  if (value > (~0ull) >> shift) return std::nullopt;
  return value << shift;
}

}  // namespace

std::uint64_t parse_rate(std::string_view text) {
  if (auto value = parse_scaled(text, false)) return *value;
  throw Error(Errc::usage, fmt::format("malformed rate '{}' (expected e.g. 16M, 500K, 0 for unlimited)", text));
}

std::uint64_t parse_size(std::string_view text) {
  if (auto value = parse_scaled(text, true)) return *value;
  throw Error(Errc::usage, fmt::format("malformed size '{}' (expected e.g. 10G, 512M, 64K)", text));
}

std::string format_bytes(std::uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  // Round first, so 1048575 bytes reads "1.0 MiB", not "1024.0 KiB".
  while (unit < 4 && (value >= 1024 || (unit > 0 && std::round(value * 10) / 10 >= 1024))) {
    value /= 1024;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string rfc3339(std::chrono::system_clock::time_point time) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(time.time_since_epoch()).count();
  // Floor division: times before 1970 still have a non-negative millisecond part.
  const std::int64_t floor_seconds = ms >= 0 ? ms / 1000 : -((-ms + 999) / 1000);
  const auto millis = static_cast<int>(ms - floor_seconds * 1000);
  const std::time_t seconds = static_cast<std::time_t>(floor_seconds);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
}

std::filesystem::path default_data_dir(std::string_view role) {
  // getenv is called while the command starts, before any thread, and
  // nothing in the program calls setenv.
  // NOLINTNEXTLINE(concurrency-mt-unsafe)
  if (const char* xdg = std::getenv("XDG_DATA_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::filesystem::path(xdg) / "p2pshare" / role;
  }
  const char* home = std::getenv("HOME");  // NOLINT(concurrency-mt-unsafe): as above
  return std::filesystem::path(home != nullptr && *home != '\0' ? home : ".") / ".local/share/p2pshare" / role;
}

}  // namespace p2pshare::cli
