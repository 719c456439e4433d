// The figure: about 1,000 hostile connections on each server while
// an honest download completes, and neither server passes 256 MiB.
#include <catch2/catch.hpp>

#include "e2e.hpp"
#include "p2pshare/protocol.hpp"
#include "support/hostile.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

TEST_CASE("a thousand hostile connections per server do not stop an honest download", "[slow][hostile]") {
  Cluster c(2);
  const auto file = c.make_file("f.bin", 256 * kChunkSize, 6);  // 64 MiB
  const std::string id = c.register_file(0, file);
  const std::vector<Nuisance> kinds{Nuisance::random_bytes, Nuisance::huge_length, Nuisance::varint_prefix,
                                    Nuisance::idle,         Nuisance::trickle,     Nuisance::hello_then_garbage};
  HostileClients on_central(c.central_addr(), 1000, kinds, protocol::hello(pb::PLANE_CENTRAL));
  HostileClients on_seed(c.peer(0).addr, 1000, kinds, protocol::hello(pb::PLANE_PEER, std::string(16, '\x01')));
  const auto out = c.path("got.bin");
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 120s);
  REQUIRE(r.exit_code == 0);
  CHECK(files_equal(file, out));
  WARN("honest 64 MiB download under attack: " << parse_json(r)["seconds"].get<double>() << " s");
  // Idle and trickling connections are cut by the first-frame deadline (10 s).
  CHECK(wait_for([&] { return on_central.closed_by_server() >= 990 && on_seed.closed_by_server() >= 990; }, 20s));
  const auto central_kib = peak_rss_kib(c.central().process->pid());
  const auto seed_kib = peak_rss_kib(c.peer(0).process->pid());
  WARN("peak RSS: central " << central_kib / 1024 << " MiB, seed " << seed_kib / 1024 << " MiB");
  CHECK(central_kib < 256 * 1024 * kMemoryBoundFactor);
  CHECK(seed_kib < 256 * 1024 * kMemoryBoundFactor);
  CHECK(c.on_central("list-files").exit_code == 0);
}
