// stop-sharing on a download stops it and keeps its data: it does not come
// back by itself, and a later request-file verifies and reuses what is there.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a stopped download keeps its data and a later request fetches only the rest", "[e2e]") {
  Cluster c(1);                                                 // peer0 downloads
  const auto file = c.make_file("f.bin", 32 * kChunkSize, 41);  // 8 MiB
  const std::string id = c.add_seed(file, "2M");                // peer1
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("dl") / "f.bin";
  Process first({binary(), "request-file", "--file-id", id, "--out", out.string(), "--peer-addr", c.peer(0).addr,
                 "--data-dir", c.peer(0).data_dir.string()},
                c.logs());
  auto have_bytes = [&] {
    const auto r = c.on_peer(0, "status", {"--json"});
    if (r.exit_code != 0) return std::int64_t{0};
    const auto downloads = parse_json(r)["downloads"];
    return downloads.empty() ? std::int64_t{0} : downloads[0]["have_bytes"].get<std::int64_t>();
  };
  REQUIRE(wait_for([&] { return have_bytes() >= static_cast<std::int64_t>(12 * kChunkSize); }, 20s));
  REQUIRE(c.on_peer(0, "stop-sharing", {"--file-id", id}).exit_code == 0);
  CHECK(first.wait(10s) == 1);  // the waiting request hears that it stopped
  CHECK(first.err().find("stopped") != std::string::npos);
  CHECK_FALSE(fs::exists(out));

  // Not resumed by a restart.
  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  c.start_peer(0);
  REQUIRE(c.wait_live(0));
  CHECK(parse_json(c.on_peer(0, "status", {"--json"}))["downloads"].empty());

  const auto again = c.on_peer(0, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 60s);
  REQUIRE(again.exit_code == 0);
  CHECK(files_equal(file, out));
  const auto received = parse_json(again)["bytes_received"].get<std::int64_t>();
  INFO("bytes_received " << received);
  CHECK(received <= static_cast<std::int64_t>(22 * kChunkSize));
}
