// Fuzzes what a stranger hands over: a p2pshare:// link (decode_link) and a
// .p2ps manifest file (decode_manifest_file). The same bytes go to both.
// What either accepts must encode back to something that decodes to the
// same thing; a manifest file is canonical, so it re-encodes byte for byte.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>

#include "p2pshare/error.hpp"
#include "p2pshare/handoff.hpp"

namespace {

using namespace p2pshare;

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

void check_link(std::string_view text) {
  handoff::ShareLink link;
  try {
    link = handoff::decode_link(text);
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == Errc::usage);
    return;
  }
  FUZZ_CHECK(text.size() <= handoff::kMaxLinkLength);
  FUZZ_CHECK(!link.name.empty() && link.name.size() <= handoff::kMaxHandoffNameLength);
  FUZZ_CHECK(link.size <= handoff::kMaxFileSize);
  const std::string again = handoff::encode_link(link);
  FUZZ_CHECK(handoff::decode_link(again) == link);
}

void check_manifest_file(std::span<const std::uint8_t> bytes) {
  handoff::ManifestFile file;
  try {
    file = handoff::decode_manifest_file(bytes);
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == Errc::verification);
    return;
  }
  FUZZ_CHECK(file.manifest.chunk_count() <= kMaxChunkCount);
  FUZZ_CHECK(file.manifest.chunk_count() == chunk_count_for(file.manifest.size, file.manifest.chunk_size));
  const std::string again = handoff::encode_manifest_file(file);
  FUZZ_CHECK(again.size() == bytes.size());
  FUZZ_CHECK(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()) == again);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  check_link(std::string_view(reinterpret_cast<const char*>(data), size));
  check_manifest_file(std::span(data, size));
  return 0;
}
