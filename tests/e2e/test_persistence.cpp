// What survives a restart: the central registry, a peer's shared files, and
// the peer's announcements to a central server that lost everything.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a SIGKILLed central server restarted on its data dir lists the file at once", "[e2e]") {
  Cluster c(1);
  const auto src = c.make_file("kept.bin", kChunkSize * 2, 21);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  const std::string addr = c.central_addr();
  Cluster::kill(c.central());
  c.start_central(addr);  // same address, same data dir
  CHECK(c.central_addr() == addr);

  // No waiting: the registry came back from disk.
  const auto entry = c.file_entry(id);
  REQUIRE(entry.is_object());
  CHECK(entry["name"] == "kept.bin");
  CHECK(entry["size"] == kChunkSize * 2);
  // file-info has the metadata too (the manifest survived).
  const auto info = c.on_central("file-info", {"--file-id", id, "--json"});
  INFO(describe(info));
  REQUIRE(info.exit_code == 0);
  CHECK(parse_json(info)["chunks"] == 2);
  // And the peer, reconnecting by itself, is a live holder again.
  CHECK(c.wait_holders(id, 1));
  CHECK(c.is_live(0, id));
}

TEST_CASE("a peer-server stopped with SIGTERM and restarted still shares its files", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("durable.bin", kChunkSize * 4 + 3, 22);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  CHECK(Cluster::stop(c.peer(0), SIGTERM) == 0);
  c.start_peer(0);  // its data dir, a new port

  // Without registering anew, it shares the file ...
  const auto r = c.on_peer(0, "status", {"--json"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto status = parse_json(r);
  REQUIRE(status["shared"].size() == 1);
  CHECK(status["shared"][0]["file_id"] == id);
  CHECK(status["shared"][0]["path"] == src.string());
  // ... announces it from its new address (the same peer, not a second one) ...
  REQUIRE(wait_for([&] {
    const auto addrs = c.live_addrs(id);
    return addrs && *addrs == std::vector<std::string>{c.peer(0).addr};
  }));
  // ... and serves it.
  const auto out = c.path("out") / "durable.bin";
  const auto got = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  CHECK(files_equal(src, out));
}

TEST_CASE("a peer re-announces its files to a central server restarted empty", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("again.bin", kChunkSize * 2 + 1, 23);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  const std::string addr = c.central_addr();
  const fs::path old_dir = c.central().data_dir;
  Cluster::kill(c.central());
  // The registry is lost, the key pair restored (the peers trust that key).
  const fs::path fresh = c.path("fresh-central");
  fs::create_directories(fresh);
  fs::copy_file(old_dir / "identity.key", fresh / "identity.key");
  fs::copy_file(old_dir / "identity.crt", fresh / "identity.crt");
  c.start_central(addr, fresh);
  // Fresh store: nothing is known until the peers come back by themselves.
  REQUIRE(c.wait_holders(id, 1));
  CHECK(c.wait_live(1));
  const auto info = c.on_central("file-info", {"--file-id", id, "--json"});
  REQUIRE(info.exit_code == 0);
  CHECK(parse_json(info)["size"] == kChunkSize * 2 + 1);
  // And the refilled registry is good for a download.
  const auto out = c.path("out") / "again.bin";
  const auto got = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  CHECK(files_equal(src, out));
}
