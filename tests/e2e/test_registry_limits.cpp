// The central registry cannot be filled: floods of identities and of
// announces are refused while honest peers are served, and stale peers and
// files nobody holds are forgotten.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>

#include <catch2/catch.hpp>

#include "central.pb.h"
#include "e2e.hpp"
#include "p2pshare/bitfield.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/tls.hpp"
#include "support/hostile.hpp"
#include "support/http_client.hpp"
#include "support/pg.hpp"
#include "support/tls_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

namespace {

// A blocking central-plane client whose connection comes from `source`
// (another loopback address: the registry limits new identities per
// address, and the honest peers of the cluster use 127.0.0.1). It presents
// `identity`'s certificate: the peer id it registers as.
class SourcedClient {
 public:
  SourcedClient(const std::string& source, const std::string& server, const tls::Identity& identity) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) throw std::runtime_error("socket() failed");
    sockaddr_in local{};
    local.sin_family = AF_INET;
    if (::inet_pton(AF_INET, source.c_str(), &local.sin_addr) != 1) throw std::runtime_error("bad source");
    const sockaddr_in remote = loopback_address(server);
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&local), sizeof(local)) != 0 ||
        ::connect(fd_, reinterpret_cast<const sockaddr*>(&remote), sizeof(remote)) != 0) {
      throw std::runtime_error("cannot connect from " + source + ": " + std::strerror(errno));
    }
    tls_ = std::make_unique<TlsClient>(fd_, &identity);
    send_frame(protocol::hello(pb::PLANE_CENTRAL));
  }
  ~SourcedClient() { ::close(fd_); }
  SourcedClient(const SourcedClient&) = delete;
  SourcedClient& operator=(const SourcedClient&) = delete;

  void send_frame(const std::string& message) { tls_->send(frame(message)); }
  void send(pb::CentralRequest request) {
    request.set_request_id(++next_id_);
    send_frame(request.SerializeAsString());
  }
  // The next answer; throws if none comes within `deadline`.
  pb::CentralResponse receive(std::chrono::steady_clock::time_point deadline) {
    char header[8];
    read_exactly(header, sizeof(header), deadline);
    std::uint32_t length = 0;
    for (int i = 0; i < 4; ++i) length = length << 8 | static_cast<std::uint8_t>(header[i]);
    if (length > protocol::kCentralLimits.max_message) throw std::runtime_error("answer too long");
    std::string message(length, '\0');
    read_exactly(message.data(), length, deadline);
    pb::CentralResponse response;
    if (!response.ParseFromString(message)) throw std::runtime_error("malformed answer");
    return response;
  }

 private:
  void read_exactly(char* out, std::size_t size, std::chrono::steady_clock::time_point deadline) {
    while (plain_.size() < size) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) throw std::runtime_error("no answer in time");
      const std::size_t before = plain_.size();
      plain_ += tls_->receive(1, left);
      if (plain_.size() == before) {
        throw std::runtime_error(tls_->closed() ? "the server closed the connection" : "no answer in time");
      }
    }
    std::memcpy(out, plain_.data(), size);
    plain_.erase(0, size);
  }

  int fd_ = -1;
  std::unique_ptr<TlsClient> tls_;
  std::string plain_;  // received, not yet read
  std::uint64_t next_id_ = 0;
};

// The identity is the connection's certificate: the request names only the port.
pb::CentralRequest register_request() {
  pb::CentralRequest request;
  request.mutable_register_()->set_listen_port(4000);
  return request;
}

// A one-chunk manifest, distinct for every n.
pb::CentralRequest announce_request(std::uint32_t n) {
  pb::CentralRequest request;
  auto* manifest = request.mutable_announce()->mutable_manifest();
  std::string hash(32, 'a');
  std::memcpy(hash.data(), &n, sizeof(n));
  manifest->set_size(1000);
  manifest->set_chunk_size(16384);
  manifest->set_chunk_hashes(hash);
  manifest->set_name("fake-" + std::to_string(n));
  return request;
}

struct Tally {
  std::atomic<std::size_t> accepted{0};
  std::atomic<std::size_t> refused{0};  // the limit's error code, naming the limit
  std::atomic<std::size_t> other{0};
  std::string first_refusal;
};

// Sends `count` requests in windows (a flood, but one that reads its
// answers, so neither side's buffers fill up), tallying the answers.
void flood(SourcedClient& client, std::size_t count, const std::function<pb::CentralRequest(std::uint32_t)>& make,
           bool (*accepted)(const pb::CentralResponse&), pb::ErrorCode refusal, Tally& tally) {
  constexpr std::size_t kWindow = 256;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (std::size_t sent = 0; sent < count;) {
    const std::size_t batch = std::min(kWindow, count - sent);
    for (std::size_t i = 0; i < batch; ++i) client.send(make(static_cast<std::uint32_t>(sent + i)));
    for (std::size_t i = 0; i < batch; ++i) {
      const auto response = client.receive(deadline);
      if (accepted(response)) {
        ++tally.accepted;
      } else if (response.has_error() && response.error().code() == refusal) {
        if (tally.refused++ == 0) tally.first_refusal = response.error().message();
      } else {
        ++tally.other;
      }
    }
    sent += batch;
  }
}

}  // namespace

TEST_CASE("central: floods of identities and announces are refused while honest peers are served",
          "[e2e][central][limits]") {
  Cluster c(1);  // default limits: 60 new identities a minute per address, 10,000 files per peer
  const std::string early = c.register_file(0, c.make_file("early.bin", 100000, 1));

  Tally registrations;
  Tally announces;
  std::atomic<bool> flooding{true};
  // Catch's assertions belong to the test's thread: the floods report here.
  std::string identity_failure;
  std::string announce_failure;
  const auto started = std::chrono::steady_clock::now();
  std::thread identity_flood([&] {
    try {
      // Each new identity is a new key: one connection (and handshake) each.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      for (int i = 0; i < 2000; ++i) {
        SourcedClient client("127.0.0.2", c.central_addr(), tls::make_identity());
        client.send(register_request());
        const auto response = client.receive(deadline);
        if (response.has_registered()) {
          ++registrations.accepted;
        } else if (response.has_error() && response.error().code() == pb::ERROR_UNAVAILABLE) {
          if (registrations.refused++ == 0) registrations.first_refusal = response.error().message();
        } else {
          ++registrations.other;
        }
      }
    } catch (const std::exception& e) {
      identity_failure = e.what();
    }
  });
  std::thread announce_flood([&] {
    try {
      SourcedClient client("127.0.0.3", c.central_addr(), tls::make_identity());
      client.send(register_request());
      if (!client.receive(std::chrono::steady_clock::now() + std::chrono::seconds(10)).has_registered()) {
        throw std::runtime_error("the announcing flooder could not register");
      }
      flood(
          client, 20000, announce_request, [](const pb::CentralResponse& r) { return r.has_ok(); }, pb::ERROR_LIMIT,
          announces);
    } catch (const std::exception& e) {
      announce_failure = e.what();
    }
    flooding = false;
  });

  // Meanwhile a new honest peer registers and shares, and the old one is served.
  CHECK(wait_for([&] { return announces.accepted > 0 || !flooding; }, std::chrono::seconds(30)));
  c.add_peer();
  const std::string fresh = c.register_file(1, c.make_file("fresh.bin", 200000, 2));
  CHECK(c.wait_holders(fresh, 1, std::chrono::seconds(30)));
  const bool overlapped = flooding;
  const auto got = c.on_peer(0, "request-file", {"--file-id", fresh, "--out", (c.root() / "copy.bin").string()});
  CHECK(got.exit_code == 0);
  identity_flood.join();
  announce_flood.join();
  CHECK(identity_failure.empty());
  CHECK(announce_failure.empty());
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started);
  INFO("flood took " << seconds.count() << " s; honest work overlapped it: " << overlapped);

  // A burst of 60 identities, plus one a second refilled while it ran.
  CHECK(registrations.accepted >= 60);
  CHECK(registrations.accepted <= 60 + static_cast<std::size_t>(seconds.count()) + 1);
  CHECK(registrations.accepted + registrations.refused == 2000);
  CHECK_THAT(registrations.first_refusal, Catch::Contains("too many new peer identities from 127.0.0.2"));
  CHECK(announces.accepted == 10000);
  CHECK(announces.refused == 10000);
  CHECK(announces.other == 0);
  CHECK_THAT(announces.first_refusal, Catch::Contains("already holds 10000 files"));

  // The honest peers and their files are unaffected.
  CHECK(c.is_live(0));
  CHECK(c.is_live(1));
  CHECK(c.holders(early) == 1);
  CHECK(c.wait_holders(fresh, 2));  // the new peer, and the old one that downloaded it
}

TEST_CASE("central: --forget-after forgets a peer gone silent and the files only it held", "[e2e][central][forget]") {
  Cluster c(0);
  const auto data = c.path("forgetful");
  Process central({binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir", data.string(),
                   "--heartbeat-interval", "200", "--forget-after", "2s"},
                  c.logs());
  const std::string addr = central.wait_listening();

  // A peer that announces and vanishes (its connection closes, it never returns).
  {
    SourcedClient gone("127.0.0.1", addr, tls::make_identity());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    gone.send(register_request());
    REQUIRE(gone.receive(deadline).has_registered());
    gone.send(announce_request(7));
    REQUIRE(gone.receive(deadline).has_ok());
  }
  const auto gone_file = [&] {
    const auto r = c.run({"list-files", "--central-server-addr", addr, "--json"});
    return r.exit_code == 0 && r.out.find("fake-7") == std::string::npos;
  };
  CHECK_FALSE(gone_file());
  // An honest peer that heartbeats stays, with its file, however long it runs.
  Process honest({binary(), "peer-server", "--central-server-addr", addr, "--addr", "127.0.0.1:0", "--data-dir",
                  c.path("honest").string()},
                 c.logs());
  const std::string honest_addr = honest.wait_listening();
  const auto shared = c.make_file("kept.bin", 50000, 3);
  const auto r = c.run({"register-file", "--path", shared.string(), "--peer-addr", honest_addr, "--data-dir",
                        c.path("honest").string()});
  REQUIRE(r.exit_code == 0);
  const std::string kept = r.out.substr(0, 64);

  CHECK(wait_for(gone_file, std::chrono::seconds(20)));
  const auto listed = c.run({"list-files", "--central-server-addr", addr, "--json"});
  CHECK(listed.out.find(kept) != std::string::npos);
  CHECK(central.running());
  CHECK(contains_ci(central.err() + central.out(), "forgot 1 peers"));
}

TEST_CASE("central-server refuses a malformed --forget-after", "[e2e][central][cli]") {
  Cluster c(0);
  for (const std::string bad : {"7x", "", "-1d", "d", "99999999999d"}) {
    check_fails(
        "--forget-after " + bad,
        c.run({"central-server", "--addr", "127.0.0.1:0", "--data-dir", c.path("d").string(), "--forget-after", bad}),
        2, {"--forget-after"});
  }
  check_fails("--forget-after shorter than the heartbeats",
              c.run({"central-server", "--addr", "127.0.0.1:0", "--data-dir", c.path("d").string(), "--forget-after",
                     "30s", "--heartbeat-interval", "10000"}),
              2, {"--forget-after"});
}

TEST_CASE("central: answers built one after another carry only their own holders, bitfields and names",
          "[e2e][central]") {
  // The server reuses the bodies of ListPeers and GetFile answers: nothing
  // of one answer may show in the next.
  Cluster c(0);
  Process central({binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir", c.path("central").string()},
                  c.logs());
  const std::string addr = central.wait_listening();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const auto ask = [&](SourcedClient& client, pb::CentralRequest request) {
    client.send(std::move(request));
    return client.receive(deadline);
  };
  // Three chunks, so a holder can be partial.
  const auto announce = [](std::uint32_t n, const std::string& name, std::optional<Bitfield> partial) {
    pb::CentralRequest request;
    auto* manifest = request.mutable_announce()->mutable_manifest();
    std::string hashes(3 * 32, 'h');
    std::memcpy(hashes.data(), &n, sizeof(n));
    manifest->set_size(40000);
    manifest->set_chunk_size(16384);
    manifest->set_chunk_hashes(hashes);
    manifest->set_name(name);
    if (partial) request.mutable_announce()->set_bitfield(partial->to_wire());
    return request;
  };
  const auto file_id_of = [](const pb::CentralRequest& request) {
    return to_bytes(manifest_from_wire(request.announce().manifest()).file_id());
  };
  SourcedClient full("127.0.0.1", addr, tls::make_identity());
  SourcedClient partial("127.0.0.1", addr, tls::make_identity());
  SourcedClient other("127.0.0.1", addr, tls::make_identity());
  for (SourcedClient* client : {&full, &partial, &other}) REQUIRE(ask(*client, register_request()).has_registered());
  Bitfield first_chunk(3);
  first_chunk.set(ChunkIndex{0});
  const auto one = announce(1, "one", std::nullopt);
  const auto two = announce(2, "two", std::nullopt);
  REQUIRE(ask(full, one).has_ok());
  REQUIRE(ask(partial, announce(1, "one", first_chunk)).has_ok());
  REQUIRE(ask(other, two).has_ok());

  const auto get_file = [&](const pb::CentralRequest& which) {
    pb::CentralRequest request;
    request.mutable_get_file()->set_file_id(file_id_of(which));
    const auto answer = ask(other, request);
    REQUIRE(answer.has_file());
    return answer.file();
  };
  const auto list_peers = [&](const pb::CentralRequest& which) {
    pb::CentralRequest request;
    request.mutable_list_peers()->set_file_id(file_id_of(which));
    const auto answer = ask(other, request);
    REQUIRE(answer.has_peer_list());
    return answer.peer_list();
  };

  const auto first = get_file(one);
  REQUIRE(first.holders_size() == 2);
  CHECK(first.names_size() == 1);
  CHECK(std::count_if(first.holders().begin(), first.holders().end(),
                      [](const pb::PeerEntry& e) { return !e.bitfield().empty(); }) == 1);
  CHECK(list_peers(one).peers_size() == 2);

  const auto second = get_file(two);
  REQUIRE(second.holders_size() == 1);
  CHECK(second.holders(0).bitfield().empty());
  REQUIRE(second.names_size() == 1);
  CHECK(second.names(0) == "two");
  CHECK(second.manifest().name() == "two");
  const auto peers = list_peers(two);
  REQUIRE(peers.peers_size() == 1);
  CHECK(peers.peers(0).peer_id() == second.holders(0).peer_id());

  // The same question again: the same answer, byte for byte.
  CHECK(get_file(one).SerializeAsString() == first.SerializeAsString());
  CHECK(central.running());
}

TEST_CASE("central: a file refused for a per-peer limit is not asked again until a withdrawal makes room",
          "[e2e][central][limits]") {
  ClusterOptions options;
  options.central_args = {"--max-files-per-peer", "2", "--http-addr", "127.0.0.1:0"};
  Cluster c(0, options);
  c.add_peer();
  const std::string http = http_of(c.central());
  const auto counter = [&](const std::string& name) { return central_metric(http, name); };
  const std::string a = c.register_file(0, c.make_file("a.bin", 1000, 1));
  const std::string b = c.register_file(0, c.make_file("b.bin", 1000, 2));
  REQUIRE(c.wait_holders(a, 1));
  REQUIRE(c.wait_holders(b, 1));
  const double errors_before = counter("p2pshare_central_request_errors_total");
  // register-file shares it here; the central server refuses to list a third.
  const std::string third = c.register_file(0, c.make_file("third.bin", 1000, 3));
  REQUIRE(wait_for([&] { return counter("p2pshare_central_request_errors_total") == errors_before + 1; }));
  REQUIRE(wait_for([&] { return c.peer(0).process->err().find("does not list third.bin") != std::string::npos; }));

  // Heartbeats go on (several seconds of them): the refused announce is
  // not repeated (it used to be, after 1 s, 3 s, 7 s, ... up to once a
  // minute, forever).
  const double requests = counter("p2pshare_central_requests_total");
  constexpr double kHeartbeats = 20;  // 4 s of the cluster's 200 ms heartbeats
  REQUIRE(wait_for([&] { return counter("p2pshare_central_requests_total") >= requests + kHeartbeats; }, 30s));
  CHECK(counter("p2pshare_central_request_errors_total") == errors_before + 1);
  CHECK(c.holders(third) == -1);
  const std::string log = c.peer(0).process->err();
  std::size_t warnings = 0;
  for (std::size_t at = log.find("does not list third.bin"); at != std::string::npos;
       at = log.find("does not list third.bin", at + 1)) {
    ++warnings;
  }
  CHECK(warnings == 1);  // one line, not one per attempt

  // A withdrawal makes room: the refused file is offered again and listed.
  REQUIRE(c.on_peer(0, "stop-sharing", {"--file-id", a}).exit_code == 0);
  CHECK(c.wait_holders(third, 1));
  CHECK(c.holders(a) <= 0);  // no live holder (the file is forgotten later)
}

TEST_CASE("central on PostgreSQL: a write that fails takes back the OK of another request in its batch",
          "[e2e][central][pg]") {
  // Answers wait for the group commit of every write made since the last
  // one. When one request's write fails, the whole batch is rolled back,
  // the writes of requests answered in it too: those answers must not say
  // OK, though the commit that ends the batch then has nothing to fail.
  FreshPgDatabase db;
  Cluster c(0);
  Process central({binary(), "central-server", "--addr", "127.0.0.1:0", "--data-dir", c.path("central").string(),
                   "--store", db.url()},
                  c.logs());
  const std::string addr = central.wait_listening();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  // A name starting "poison" cannot be stored: a trigger of the test's own
  // fails its insert, as a full disk or a broken constraint would.
  PgSession admin(db.url());
  admin.exec(
      "CREATE FUNCTION p2pshare_test_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
      "IF NEW.name LIKE 'poison%' THEN RAISE EXCEPTION 'poisoned on purpose'; END IF; RETURN NEW; END $$");
  admin.exec(
      "CREATE TRIGGER p2pshare_test_poison BEFORE INSERT ON file_names FOR EACH ROW "
      "EXECUTE FUNCTION p2pshare_test_poison()");

  SourcedClient blocker("127.0.0.1", addr, tls::make_identity());
  SourcedClient good("127.0.0.1", addr, tls::make_identity());
  SourcedClient poisoned("127.0.0.1", addr, tls::make_identity());
  for (SourcedClient* client : {&blocker, &good, &poisoned}) {
    client->send(register_request());
    REQUIRE(client->receive(deadline).has_registered());
  }
  // Both requests must reach the server in one wakeup, so that one batch
  // holds both: the server is kept busy on a table lock meanwhile.
  PgSession lock(db.url());
  lock.exec("BEGIN; LOCK TABLE files IN ACCESS EXCLUSIVE MODE");
  blocker.send(announce_request(1));
  REQUIRE(wait_for(
      [&] {
        return admin.value(
                   "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                   "wait_event_type = 'Lock'") != "0";
      },
      std::chrono::seconds(20)));
  auto good_request = announce_request(2);
  auto poisoned_request = announce_request(3);
  poisoned_request.mutable_announce()->mutable_manifest()->set_name("poison-3");
  good.send(good_request);  // on loopback, in the server's socket buffer once send returns
  poisoned.send(poisoned_request);
  lock.exec("ROLLBACK");

  REQUIRE(blocker.receive(deadline).has_ok());
  const auto poisoned_answer = poisoned.receive(deadline);
  CHECK(poisoned_answer.has_error());
  const auto good_answer = good.receive(deadline);
  INFO(good_answer.ShortDebugString());
  const auto stored = [&](const std::string& name) {
    return admin.value("SELECT count(*) FROM file_names WHERE name = '" + name + "'") == "1";
  };
  // The rule: OK only for what is stored. And here the poisoned write did
  // roll back the good one's, so the good one hears "retry" ...
  CHECK((!good_answer.has_ok() || stored("fake-2")));
  CHECK(good_answer.has_error());
  CHECK_FALSE(stored("fake-2"));
  CHECK_FALSE(stored("poison-3"));
  // ... and its retry is stored.
  good.send(good_request);
  CHECK(good.receive(deadline).has_ok());
  CHECK(stored("fake-2"));
  CHECK(stored("fake-1"));
  CHECK(central.running());
}
