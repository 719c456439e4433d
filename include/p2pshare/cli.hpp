// Helpers shared by the commands: addresses, rates, sizes, times, default
// locations.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace p2pshare::cli {

struct Address {
  std::string host;  // without brackets for IPv6
  std::uint16_t port = 0;
  std::string to_string() const;
};

// "HOST:PORT", "[IPv6]:PORT" or "name:PORT". Throws Error(usage) naming the
// problem (the command line is wrong: exit status 2).
Address parse_address(std::string_view text);
// The most central servers one --central-server-addr may list.
inline constexpr std::size_t kMaxCentralAddresses = 16;
// "A,B,...": one or more addresses as parse_address takes them, separated by
// commas (spaces around an item are ignored), in order. Throws Error(usage),
// naming `flag`, for an empty item, a repeated address, more than
// kMaxCentralAddresses, or a malformed one.
std::vector<Address> parse_address_list(std::string_view text, std::string_view flag = "--central-server-addr");
// The addresses joined back with commas.
std::string to_string(const std::vector<Address>& addresses);
// "16M" = 16 MiB/s, "500K", "1G", "12345" bytes/s; "0" = unlimited.
std::uint64_t parse_rate(std::string_view text);
// "1.5 GiB"
std::string format_bytes(std::uint64_t bytes);
// RFC 3339 in UTC with milliseconds: 2026-11-21T14:25:03.123Z
std::string rfc3339(std::chrono::system_clock::time_point time);
// Where a role ("peer", "central") keeps its data unless told otherwise:
// $XDG_DATA_HOME/p2pshare/<role>, else $HOME/.local/share/p2pshare/<role>.
std::filesystem::path default_data_dir(std::string_view role);

}  // namespace p2pshare::cli
