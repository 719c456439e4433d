// Fuzzes wire::FrameDecoder, the framing every blocking client and tool uses.
// The input is a byte stream fed in pieces whose sizes also come from the
// input, so headers and bodies get split at every possible point. A second
// decoder of our own (a straight reading of the frame format) is the oracle:
// every frame popped must be exactly the next frame of the stream, within the
// limits, and nothing that is a whole valid frame may be left behind.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "p2pshare/protocol.hpp"
#include "p2pshare/wire.hpp"

namespace {

using p2pshare::wire::FrameDecoder;
using p2pshare::wire::kHeaderSize;
using p2pshare::wire::Limits;

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

// Tiny limits make the over-limit paths reachable with small inputs; the
// real planes' limits check the constants the servers actually use.
Limits pick_limits(std::uint8_t selector) {
  switch (selector % 6) {
    case 0:
      return p2pshare::protocol::kPeerLimits;
    case 1:
      return p2pshare::protocol::kCentralLimits;
    case 2:
      return p2pshare::protocol::kControlLimits;
    case 3:
      return p2pshare::protocol::kHelloLimits;
    case 4:
      return Limits{16, 8};
    default:
      return Limits{1, 0};
  }
}

std::uint32_t be32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = v << 8 | static_cast<std::uint8_t>(s[at + i]);
  return v;
}

struct Oracle {
  Limits limits;
  std::string stream;      // every byte fed so far
  std::size_t offset = 0;  // where the next frame starts

  // Checks a popped frame against the stream and advances past it.
  void check_frame(const FrameDecoder::Frame& frame) {
    FUZZ_CHECK(stream.size() - offset >= kHeaderSize);
    const std::uint32_t m = be32(stream, offset);
    const std::uint32_t p = be32(stream, offset + 4);
    FUZZ_CHECK(m > 0 && m <= limits.max_message);
    FUZZ_CHECK(p <= limits.max_payload);
    FUZZ_CHECK(frame.message.size() == m && frame.payload.size() == p);
    FUZZ_CHECK(frame.message.size() <= limits.max_message);
    FUZZ_CHECK(frame.payload.size() <= limits.max_payload);
    FUZZ_CHECK(stream.compare(offset + kHeaderSize, m, frame.message) == 0);
    FUZZ_CHECK(stream.compare(offset + kHeaderSize + m, p, frame.payload) == 0);
    offset += kHeaderSize + std::size_t{m} + p;
  }

  // Is the header at `offset` (if whole) acceptable?
  bool header_ok() const {
    if (stream.size() - offset < kHeaderSize) return true;
    const std::uint32_t m = be32(stream, offset);
    const std::uint32_t p = be32(stream, offset + 4);
    return m > 0 && m <= limits.max_message && p <= limits.max_payload;
  }

  bool whole_frame_pending() const {
    if (stream.size() - offset < kHeaderSize || !header_ok()) return false;
    const std::size_t total = kHeaderSize + std::size_t{be32(stream, offset)} + be32(stream, offset + 4);
    return stream.size() - offset >= total;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  const auto mode = in.ConsumeIntegral<std::uint8_t>();
  Oracle oracle{pick_limits(mode), {}, 0};
  FrameDecoder decoder(oracle.limits);
  // Popping after every piece vs. letting frames pile up exercise different
  // buffer compaction paths.
  const bool lazy = (mode & 0x80) != 0;
  bool failed = false;

  auto pop_all = [&] {
    while (auto frame = decoder.next()) oracle.check_frame(*frame);
    // Nothing whole and valid may be left behind; a bad header must be reported.
    FUZZ_CHECK(!oracle.whole_frame_pending());
    if (!oracle.header_ok()) FUZZ_CHECK(!decoder.error().empty());
  };

  while (in.remaining_bytes() > 0 && !failed) {
    const auto piece_size = in.ConsumeIntegralInRange<std::size_t>(0, 64);
    const std::string piece = in.ConsumeBytesAsString(piece_size);
    oracle.stream += piece;
    const bool ok = decoder.feed(std::span(reinterpret_cast<const std::uint8_t*>(piece.data()), piece.size()));
    if (!ok) {
      FUZZ_CHECK(!decoder.error().empty());
      failed = true;
    }
    if (!lazy || failed) pop_all();
  }
  pop_all();
  // Once the decoder has an error it must stay failed: no frame after it.
  if (!decoder.error().empty()) {
    FUZZ_CHECK(!decoder.next().has_value());
    const std::uint8_t more[kHeaderSize + 1] = {0, 0, 0, 1, 0, 0, 0, 0, 'x'};
    FUZZ_CHECK(!decoder.feed(more));
    FUZZ_CHECK(!decoder.next().has_value());
  }
  return 0;
}
