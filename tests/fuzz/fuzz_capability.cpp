// Fuzzes what a holder does with a capability from the network
// (accounts::verify_capability, run on every Interested and Renew of a
// group's file): any bytes are refused with Error(unauthorized) or accepted,
// and an accepted one was signed by the trusted key, names the presenter,
// has not expired and carries names that follow the rules.
//
// Input: a serialized pb::Capability. Its first byte also picks whether the
// body is re-signed with the trusted key (so the fuzzer gets past the
// signature to the body's checks).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common.pb.h"
#include "p2pshare/accounts.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/tls.hpp"

namespace {

using namespace p2pshare;

#define FUZZ_CHECK(cond)                                                                \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

const tls::Identity& central() {
  static const tls::Identity identity = [] {
    std::array<std::uint8_t, 32> seed{};
    seed.fill(7);
    return tls::make_identity(std::span<const std::uint8_t, 32>(seed));
  }();
  return identity;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  pb::Capability wire;
  if (!wire.ParseFromArray(data, static_cast<int>(size))) return 0;
  const PeerId presenter{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
  const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'800'000'000));
  if (size > 0 && (data[0] & 1) != 0) {
    // Re-signed: the body's own checks are reached.
    pb::CapabilityBody body;
    if (body.ParseFromString(wire.body())) {
      // A time_point holds about ±292 years of nanoseconds: clamp the
      // fuzzed milliseconds into it before converting (the verifier refuses
      // anything more than a day ahead anyway).
      constexpr std::int64_t kLimitMs = INT64_MAX / 1'000'000;
      const std::int64_t expires_ms = std::clamp<std::int64_t>(body.expires_ms(), -kLimitMs, kLimitMs);
      accounts::Capability parsed{body.user(), presenter, body.group(),
                                  std::chrono::system_clock::time_point(std::chrono::milliseconds(expires_ms))};
      if (auto subject = peer_id_from_bytes(body.subject())) parsed.subject = *subject;
      wire = accounts::sign_capability(parsed, central().key.get());
    }
  }
  try {
    const auto capability = accounts::verify_capability(wire, central().key_hash, presenter, now);
    FUZZ_CHECK(capability.subject == presenter);
    FUZZ_CHECK(capability.expires > now);
    FUZZ_CHECK(!accounts::name_error("user", capability.user));
    FUZZ_CHECK(!accounts::name_error("group", capability.group));
    FUZZ_CHECK(accounts::ed25519_key_hash(wire.central_key()) == central().key_hash);
  } catch (const Error& e) {
    FUZZ_CHECK(e.code() == Errc::unauthorized);
  }
  return 0;
}
