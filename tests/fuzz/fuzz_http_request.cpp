// Fuzzes the HTTP side's decoders of network bytes: http::RequestParser (the
// request as it arrives, in pieces of the sizes the input picks) and
// http::parse_range (the Range header the gateway answers).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "p2pshare/http.hpp"

namespace {

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace p2pshare::http;
  if (size < 2) return 0;
  // The first byte picks the piece size the bytes arrive in.
  const std::size_t piece = 1 + data[0] % 64;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  Limits limits;
  limits.max_header_bytes = 512;
  limits.max_body_bytes = 256;
  RequestParser parser(limits);
  for (std::size_t at = 0; at < input.size() && parser.state() == RequestParser::State::incomplete; at += piece) {
    const auto part = input.substr(at, piece);
    parser.feed(part.data(), part.size());
  }
  if (parser.state() == RequestParser::State::refused) {
    const int status = parser.refusal_status();
    FUZZ_CHECK(status == 400 || status == 413 || status == 431);
    FUZZ_CHECK(!parser.refusal().empty());
  }
  if (parser.state() == RequestParser::State::complete) {
    const auto& request = parser.request();
    FUZZ_CHECK(!request.method.empty());
    FUZZ_CHECK(request.body.size() <= limits.max_body_bytes);
    std::size_t header_bytes = 0;
    for (const auto& [name, value] : request.headers) {
      header_bytes += name.size() + value.size();
      for (const char ch : name) FUZZ_CHECK(!(ch >= 'A' && ch <= 'Z'));
    }
    FUZZ_CHECK(header_bytes <= limits.max_header_bytes);
    (void)request.query_param("token");
    // The Range header, against a few sizes: inside the file, in order.
    if (auto range = request.header("range")) {
      for (const std::uint64_t file_size : {std::uint64_t{1}, std::uint64_t{1000}, std::uint64_t{1} << 40}) {
        if (auto r = parse_range(*range, file_size)) {
          FUZZ_CHECK(r->first <= r->last);
          FUZZ_CHECK(r->last < file_size);
        }
      }
    }
  }
  // The Range grammar on its own, straight from the input.
  for (const std::uint64_t file_size : {std::uint64_t{0}, std::uint64_t{7}, ~std::uint64_t{0}}) {
    if (auto r = parse_range(input, file_size)) {
      FUZZ_CHECK(r->first <= r->last);
      FUZZ_CHECK(r->last < file_size);
    }
  }
  return 0;
}
