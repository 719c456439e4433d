// Command-line helpers: addresses, rates, byte counts, timestamps.
#include <catch2/catch.hpp>

#include <chrono>
#include <string>

#include "p2pshare/cli.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/peer_server.hpp"

using p2pshare::Errc;
using p2pshare::Error;
namespace cli = p2pshare::cli;

namespace {

// The code of the p2pshare::Error `fn` throws; fails the test when it throws
// nothing or something else.
template <typename Fn>
Errc thrown_code(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  } catch (const std::exception& e) {
    FAIL("threw a non-p2pshare exception: " << e.what());
  }
  FAIL("did not throw");
  return Errc::io;
}

std::chrono::system_clock::time_point at_ms(std::int64_t ms) {
  return std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
}

}  // namespace

TEST_CASE("parse_address accepts host:port, [v6]:port and names", "[cli]") {
  auto a = cli::parse_address("127.0.0.1:80");
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 80);
  CHECK(a.to_string() == "127.0.0.1:80");

  auto b = cli::parse_address("[::1]:0");
  CHECK(b.host == "::1");  // brackets stripped
  CHECK(b.port == 0);
  CHECK(b.to_string() == "[::1]:0");

  auto c = cli::parse_address("localhost:65535");
  CHECK(c.host == "localhost");
  CHECK(c.port == 65535);
  CHECK(c.to_string() == "localhost:65535");

  auto d = cli::parse_address("[fe80::1:2]:4242");
  CHECK(d.host == "fe80::1:2");
  CHECK(d.port == 4242);
}

TEST_CASE("parse_address rejects malformed addresses with Errc::usage", "[cli]") {
  const char* bad[] = {"",        "host",     ":80",      "host:",   "host:65536",
                       "host:-1", "host:80x", "[::1",     "[::1]80", "::1:80",
                       "[]:80",   "host:+80", "host: 80", "[::1]:",  "host:99999999999999999999"};
  for (const char* text : bad) {
    INFO("address: '" << text << "'");
    CHECK(thrown_code([&] { cli::parse_address(text); }) == Errc::usage);
  }
}

TEST_CASE("parse_address_list keeps the order of one or more addresses", "[cli]") {
  auto one = cli::parse_address_list("127.0.0.1:80");
  REQUIRE(one.size() == 1);
  CHECK(one[0].to_string() == "127.0.0.1:80");

  auto three = cli::parse_address_list("127.0.0.1:7070, [::1]:7071 ,localhost:7072");
  REQUIRE(three.size() == 3);
  CHECK(three[0].to_string() == "127.0.0.1:7070");
  CHECK(three[1].to_string() == "[::1]:7071");
  CHECK(three[2].to_string() == "localhost:7072");
  CHECK(cli::to_string(three) == "127.0.0.1:7070,[::1]:7071,localhost:7072");

  std::string sixteen;
  for (int i = 0; i < 16; ++i) sixteen += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(1000 + i);
  CHECK(cli::parse_address_list(sixteen).size() == 16);
}

TEST_CASE("parse_address_list refuses empty items, duplicates, bad addresses and long lists", "[cli]") {
  std::string seventeen;
  for (int i = 0; i < 17; ++i) seventeen += (i ? "," : "") + std::string("127.0.0.1:") + std::to_string(1000 + i);
  const std::string bad[] = {"",
                             ",",
                             "127.0.0.1:1,",
                             ",127.0.0.1:1",
                             "127.0.0.1:1,,127.0.0.1:2",
                             "127.0.0.1:1, ,127.0.0.1:2",
                             "127.0.0.1:1,127.0.0.1:1",
                             "127.0.0.1:1,127.0.0.1:2, 127.0.0.1:1",
                             "127.0.0.1:1,host",
                             "127.0.0.1:1;127.0.0.1:2",
                             seventeen};
  for (const auto& text : bad) {
    INFO("list: '" << text << "'");
    CHECK(thrown_code([&] { cli::parse_address_list(text); }) == Errc::usage);
  }
  try {
    cli::parse_address_list("127.0.0.1:1,127.0.0.1:1");
    FAIL("did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("127.0.0.1:1 is listed twice") != std::string::npos);
  }
}

TEST_CASE("parse_address names the bad input in its message", "[cli]") {
  try {
    cli::parse_address("host:65536");
    FAIL("did not throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("host:65536") != std::string::npos);
  }
}

TEST_CASE("parse_size takes K/M/G/T suffixes and refuses what does not fit", "[cli]") {
  CHECK(cli::parse_size("512M") == 512ull << 20);
  CHECK(cli::parse_size("10g") == 10ull << 30);
  CHECK(cli::parse_size("2T") == 2ull << 40);
  CHECK(cli::parse_size("4096") == 4096);
  for (const char* bad : {"", "T", "1.5G", "-1M", "16E", "16777216T", "1 G"}) {
    INFO(bad);
    CHECK_THROWS_AS(cli::parse_size(bad), Error);
  }
  CHECK_THROWS_AS(cli::parse_rate("1T"), Error);  // a rate in TiB/s is a typo
}

TEST_CASE("parse_rate takes plain bytes and K/M/G suffixes in either case", "[cli]") {
  CHECK(cli::parse_rate("0") == 0);
  CHECK(cli::parse_rate("16M") == 16ull * 1024 * 1024);
  CHECK(cli::parse_rate("16m") == 16ull * 1024 * 1024);
  CHECK(cli::parse_rate("500K") == 500ull * 1024);
  CHECK(cli::parse_rate("500k") == 500ull * 1024);
  CHECK(cli::parse_rate("1G") == 1ull << 30);
  CHECK(cli::parse_rate("1g") == 1ull << 30);
  CHECK(cli::parse_rate("12345") == 12345);
  CHECK(cli::parse_rate("18446744073709551615") == ~0ull);         // the largest u64 still parses
  CHECK(cli::parse_rate("17179869183G") == 17179869183ull << 30);  // the largest G that fits
}

TEST_CASE("parse_rate rejects malformed rates with Errc::usage", "[cli]") {
  const char* bad[] = {
      "",     "M",    "16X", "-1", "99999999999999999999G", "17179869184G", "18446744073709551616", "1.5M", " 16M",
      "16 M", "16MB", "K16", "+5"};
  for (const char* text : bad) {
    INFO("rate: '" << text << "'");
    CHECK(thrown_code([&] { cli::parse_rate(text); }) == Errc::usage);
  }
}

TEST_CASE("format_bytes uses binary units with one decimal", "[cli]") {
  CHECK(cli::format_bytes(0) == "0 B");
  CHECK(cli::format_bytes(1) == "1 B");
  CHECK(cli::format_bytes(1023) == "1023 B");
  CHECK(cli::format_bytes(1024) == "1.0 KiB");
  CHECK(cli::format_bytes(1536) == "1.5 KiB");
  CHECK(cli::format_bytes(16ull << 20) == "16.0 MiB");
  CHECK(cli::format_bytes(3ull << 29) == "1.5 GiB");
  CHECK(cli::format_bytes(5ull << 40) == "5.0 TiB");
  CHECK(cli::format_bytes(2048ull << 40) == "2048.0 TiB");  // TiB is the largest unit
}

// The unit is chosen after rounding: just under the next unit reads as it.
TEST_CASE("format_bytes never prints 1024.0 of a unit", "[cli]") {
  CHECK(cli::format_bytes((1ull << 20) - 1) == "1.0 MiB");
  CHECK(cli::format_bytes((1ull << 30) - 1) == "1.0 GiB");
}

TEST_CASE("rfc3339 formats UTC with milliseconds", "[cli]") {
  CHECK(cli::rfc3339(at_ms(0)) == "1970-01-01T00:00:00.000Z");
  CHECK(cli::rfc3339(at_ms(1700000000123)) == "2023-11-14T22:13:20.123Z");
  CHECK(cli::rfc3339(at_ms(951782400007)) == "2000-02-29T00:00:00.007Z");  // leap day
  CHECK(cli::rfc3339(at_ms(4102444799999)) == "2099-12-31T23:59:59.999Z");
  // Sub-millisecond precision is truncated, not rounded.
  const auto us = std::chrono::system_clock::time_point(std::chrono::microseconds(1700000000123999));
  CHECK(cli::rfc3339(us) == "2023-11-14T22:13:20.123Z");
}

// Times before the epoch use floor division (-1 ms is 23:59:59.999).
TEST_CASE("rfc3339 handles times before the epoch", "[cli]") {
  CHECK(cli::rfc3339(at_ms(-1)) == "1969-12-31T23:59:59.999Z");
}

TEST_CASE("cookie_hex_of reads the cookie file's forms and nothing else", "[cli]") {
  const std::string hex(64, 'a');
  CHECK(p2pshare::peer::cookie_hex_of(hex) == hex);
  CHECK(p2pshare::peer::cookie_hex_of(hex + "\n") == hex);
  CHECK(p2pshare::peer::cookie_hex_of(hex + "\r\n") == hex);
  CHECK(p2pshare::peer::cookie_hex_of(std::string(64, 'F')) == std::string(64, 'f'));
  // 32 raw bytes: the form written before the HTTP side.
  CHECK(p2pshare::peer::cookie_hex_of(std::string(32, '\x01')) == [] {
    std::string out;
    for (int i = 0; i < 32; ++i) out += "01";
    return out;
  }());
  CHECK_FALSE(p2pshare::peer::cookie_hex_of(""));
  CHECK_FALSE(p2pshare::peer::cookie_hex_of(hex.substr(1)));
  CHECK_FALSE(p2pshare::peer::cookie_hex_of(hex + "a"));
  CHECK_FALSE(p2pshare::peer::cookie_hex_of(hex + "\n\n"));
  CHECK_FALSE(p2pshare::peer::cookie_hex_of(std::string(63, 'a') + "g"));
}
