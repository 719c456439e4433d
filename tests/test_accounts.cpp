// Accounts: password hashes, the guess throttle, name rules, capabilities.
#include <catch2/catch.hpp>

#include "common.pb.h"
#include "p2pshare/accounts.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/tls.hpp"

using namespace p2pshare;
using namespace std::chrono_literals;
using Clock = std::chrono::system_clock;

TEST_CASE("argon2id hashes verify the password and nothing else") {
  const auto hash = accounts::hash_password("correct horse", accounts::minimum_cost());
  CHECK(hash.rfind("$argon2id$", 0) == 0);
  CHECK(hash.find("correct horse") == std::string::npos);
  CHECK(accounts::verify_password(hash, "correct horse"));
  CHECK_FALSE(accounts::verify_password(hash, "correct horsE"));
  CHECK_FALSE(accounts::verify_password(hash, ""));
  CHECK_FALSE(accounts::verify_password("not a hash", "correct horse"));
  // Salted: the same password hashes differently each time.
  CHECK(accounts::hash_password("correct horse", accounts::minimum_cost()) != hash);
  CHECK_FALSE(accounts::verify_password(accounts::dummy_hash(accounts::minimum_cost()), "correct horse"));
}

TEST_CASE("names of users and groups follow the rules") {
  CHECK_FALSE(accounts::name_error("user", "alice"));
  CHECK_FALSE(accounts::name_error("group", "Team-1.b_c"));
  CHECK(accounts::name_error("user", ""));
  CHECK(accounts::name_error("user", std::string(33, 'a')));
  CHECK_FALSE(accounts::name_error("user", std::string(32, 'a')));
  CHECK(accounts::name_error("group", "../etc"));
  CHECK(accounts::name_error("group", "a/b"));
  CHECK(accounts::name_error("group", ".hidden"));
  CHECK(accounts::name_error("group", "sp ace"));
  CHECK(accounts::name_error("group", std::string("nul\0x", 5)));
}

TEST_CASE("the throttle delays repeated failures exponentially, in bounded memory") {
  accounts::Throttle throttle(4, 2, 100ms, 1000ms);
  const auto t0 = accounts::Throttle::Clock::time_point{} + 1h;
  CHECK(throttle.wait("alice", t0) == 0ms);
  throttle.failed("alice", t0);
  throttle.failed("alice", t0);
  CHECK(throttle.wait("alice", t0) == 0ms);  // the first failures are free (typos)
  throttle.failed("alice", t0);
  CHECK(throttle.wait("alice", t0) == 100ms);
  throttle.failed("alice", t0);
  CHECK(throttle.wait("alice", t0) == 200ms);
  for (int i = 0; i < 40; ++i) throttle.failed("alice", t0);
  CHECK(throttle.wait("alice", t0) == 1000ms);  // capped
  CHECK(throttle.wait("alice", t0 + 1000ms) == 0ms);
  throttle.succeeded("alice");
  CHECK(throttle.size() == 0);
  for (int i = 0; i < 1000; ++i) throttle.failed("user" + std::to_string(i), t0);
  CHECK(throttle.size() == 4);  // never more than its capacity
}

namespace {

struct Fixture {
  tls::Identity central = tls::make_identity();
  PeerId subject{{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
  Clock::time_point now = Clock::now();
  accounts::Capability capability() const { return {"alice", subject, "team", now + 5min}; }
  pb::Capability signed_capability() const { return accounts::sign_capability(capability(), central.key.get()); }
};

void check_refused(const pb::Capability& wire, const tls::KeyHash& trusted, const PeerId& presenter,
                   Clock::time_point now, const std::string& why) {
  try {
    accounts::verify_capability(wire, trusted, presenter, now);
    FAIL("accepted: " << why);
  } catch (const Error& e) {
    CHECK(e.code() == Errc::unauthorized);
    CHECK(std::string(e.what()).find(why) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("a capability signed by the trusted central verifies for its subject") {
  Fixture f;
  const auto wire = f.signed_capability();
  CHECK(accounts::ed25519_key_hash(wire.central_key()) == f.central.key_hash);
  const auto got = accounts::verify_capability(wire, f.central.key_hash, f.subject, f.now);
  CHECK(got.user == "alice");
  CHECK(got.group == "team");
  CHECK(got.subject == f.subject);
}

TEST_CASE("every forged or misused capability is refused") {
  Fixture f;
  const auto good = f.signed_capability();
  SECTION("bad signature") {
    auto wire = good;
    std::string sig = wire.signature();
    sig[5] = static_cast<char>(sig[5] ^ 1);
    wire.set_signature(sig);
    check_refused(wire, f.central.key_hash, f.subject, f.now, "bad signature");
  }
  SECTION("body changed after signing: another group") {
    pb::CapabilityBody body;
    REQUIRE(body.ParseFromString(good.body()));
    body.set_group("other");
    auto wire = good;
    wire.set_body(body.SerializeAsString());
    check_refused(wire, f.central.key_hash, f.subject, f.now, "bad signature");
  }
  SECTION("signed by another key") {
    const auto mallory = tls::make_identity();
    const auto wire = accounts::sign_capability(f.capability(), mallory.key.get());
    check_refused(wire, f.central.key_hash, f.subject, f.now, "not signed by the central server");
  }
  SECTION("expired") {
    check_refused(good, f.central.key_hash, f.subject, f.now + 5min, "expired");
  }
  SECTION("an expiry far in the future, or more than a day ahead") {
    // (Larger values than a time_point holds, which would overflow the
    // clock, are refused the same way; fuzz_capability reaches them.)
    for (const auto expires : {Clock::time_point::max(), f.now + std::chrono::hours(25)}) {
      auto far = f.capability();
      far.expires = expires;
      const auto wire = accounts::sign_capability(far, f.central.key.get());
      check_refused(wire, f.central.key_hash, f.subject, f.now, "too far ahead");
    }
  }
  SECTION("presented by another peer") {
    PeerId other = f.subject;
    other.bytes[0] ^= 0xff;
    check_refused(good, f.central.key_hash, other, f.now, "issued to another peer");
  }
  SECTION("malformed fields") {
    auto wire = good;
    wire.set_central_key("short");
    check_refused(wire, f.central.key_hash, f.subject, f.now, "32 bytes");
    wire = good;
    wire.set_signature("");
    check_refused(wire, f.central.key_hash, f.subject, f.now, "64 bytes");
    wire = good;
    wire.set_body(std::string(1000, 'x'));
    check_refused(wire, f.central.key_hash, f.subject, f.now, "size");
  }
}
