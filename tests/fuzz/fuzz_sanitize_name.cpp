// Fuzzes store::sanitize_name and store::display_name: the gates between a
// file name a stranger announced and a path in the download dir or a line on
// the user's terminal.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "p2pshare/manifest.hpp"
#include "p2pshare/store.hpp"

namespace {

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

// Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF); the code
// points go to `out`. Written apart from the library's decoder on purpose.
bool decode_utf8(std::string_view s, std::vector<std::uint32_t>& out) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      out.push_back(c);
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 1;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 2;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    for (std::size_t k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3f);
    }
    static constexpr std::uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    out.push_back(cp);
    i += n + 1;
  }
  return true;
}

bool valid_utf8(std::string_view s) {
  std::vector<std::uint32_t> ignored;
  return decode_utf8(s, ignored);
}

// What must never reach a file name or a terminal: C0, DEL and C1 controls,
// the bidi controls (U+202E shows "x\u202etxt.exe" as "xexe.txt"), and the
// line and paragraph separators.
bool hidden_or_control(std::uint32_t c) {
  return c < 0x20 || (c >= 0x7f && c <= 0x9f) || c == 0x061c || c == 0x200e || c == 0x200f ||
         (c >= 0x202a && c <= 0x202e) || (c >= 0x2066 && c <= 0x2069) || c == 0x2028 || c == 0x2029;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::string out = p2pshare::store::sanitize_name(input, "fallback");

  FUZZ_CHECK(!out.empty());
  FUZZ_CHECK(out.size() <= p2pshare::kMaxNameLength);
  FUZZ_CHECK(out != "." && out != "..");
  FUZZ_CHECK(out.front() != '.');
  for (const char ch : out) {
    const auto c = static_cast<unsigned char>(ch);
    FUZZ_CHECK(c != '/' && c != '\\');
    FUZZ_CHECK(c >= 0x20 && c != 0x7f);  // NUL and every other control byte
  }
  // Always valid UTF-8 (stray bytes are dropped, and cutting to length never
  // splits a character), and no control or bidi character survives.
  std::vector<std::uint32_t> code_points;
  FUZZ_CHECK(decode_utf8(out, code_points));
  for (const auto c : code_points) FUZZ_CHECK(!hidden_or_control(c));
  // The name as shown on a terminal: valid, and just as clean.
  const std::string shown = p2pshare::store::display_name(input);
  code_points.clear();
  FUZZ_CHECK(decode_utf8(shown, code_points));
  for (const auto c : code_points) FUZZ_CHECK(!hidden_or_control(c));
  if (valid_utf8(input)) {
    std::vector<std::uint32_t> in_points;
    decode_utf8(input, in_points);
    FUZZ_CHECK(code_points.size() == in_points.size());  // one shown character per character
  }
  // Nothing comes from outside the last path component of the input.
  if (out != "fallback") {
    const auto cut = input.find_last_of("/\\");
    const std::string_view last = cut == std::string_view::npos ? input : input.substr(cut + 1);
    std::size_t at = 0;
    for (const char ch : out) {  // out is a subsequence of the last component
      at = last.find(ch, at);
      FUZZ_CHECK(at != std::string_view::npos);
      ++at;
    }
  }
  return 0;
}
