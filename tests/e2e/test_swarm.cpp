// The swarm path: one file held by two peers, fetched by a third from both.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

TEST_CASE("a file registered on two peers downloads on a third byte for byte", "[e2e]") {
  Cluster c(3);
  const std::uint64_t size = 3 * 1024 * 1024 + 12345;  // 13 chunks, the last one short
  const auto chunks = chunks_for(size);
  const auto a = c.make_file("movie.bin", size, 7, "a");
  const auto b = c.make_file("movie.bin", size, 7, "b");  // the same bytes, another copy

  const std::string id = c.register_file(0, a);
  CHECK(is_file_id(id));
  CHECK(c.register_file(1, b) == id);

  // Both announcements reach the central server.
  REQUIRE(c.wait_holders(id, 2));
  {
    const auto entry = c.file_entry(id);
    CHECK(entry["name"] == "movie.bin");
    CHECK(entry["size"] == size);
  }
  {
    const auto addrs = c.live_addrs(id);
    REQUIRE(addrs);
    std::vector<std::string> expected{c.peer(0).addr, c.peer(1).addr};
    std::sort(expected.begin(), expected.end());
    CHECK(*addrs == expected);
  }
  {
    const auto r = c.on_central("file-info", {"--file-id", id, "--json"});
    INFO(describe(r));
    REQUIRE(r.exit_code == 0);
    const auto info = parse_json(r);
    CHECK(info["file_id"] == id);
    CHECK(info["size"] == size);
    CHECK(info["chunk_size"] == kChunkSize);
    CHECK(info["chunks"] == chunks);
    CHECK(info["holders"].size() == 2);
    REQUIRE(info["chunk_copies"].size() == chunks);
    for (const auto& copies : info["chunk_copies"]) CHECK(copies == 2);
  }

  // The third peer fetches it; stdout is the finished file's path, alone.
  const auto out = c.path("got") / "movie-copy.bin";
  {
    const auto r = c.on_peer(2, "request-file", {"--file-id", id, "--out", out.string()});
    INFO(describe(r));
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == out.string() + "\n");
  }
  CHECK(files_equal(a, out));

  // The downloader is now a holder too.
  CHECK(c.wait_holders(id, 3));
  CHECK(c.is_live(2, id));
  {
    // Every chunk has three live copies once the downloader's completion is announced.
    nlohmann::json info;
    const bool three = wait_for([&] {
      const auto r = c.on_central("file-info", {"--file-id", id, "--json"});
      if (r.exit_code != 0) return false;
      info = parse_json(r);
      if (info["holders"].size() != 3 || info["chunk_copies"].size() != chunks) return false;
      for (const auto& copies : info["chunk_copies"]) {
        if (copies != 3) return false;
      }
      return true;
    });
    INFO(info.dump());
    CHECK(three);
  }
  {
    const auto r = c.on_peer(2, "status", {"--json"});
    INFO(describe(r));
    REQUIRE(r.exit_code == 0);
    const auto status = parse_json(r);
    CHECK(status["downloads"].empty());
    REQUIRE(status["shared"].size() == 1);
    CHECK(status["shared"][0]["file_id"] == id);
    CHECK(status["shared"][0]["path"] == out.string());
    CHECK(status["shared"][0]["size"] == size);
    CHECK(status["central_connected"] == true);
    CHECK(status["addr"] == c.peer(2).addr);
  }
  // The table form carries the same file.
  {
    const auto r = c.on_peer(2, "status");
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.find(id) != std::string::npos);
  }

  // A fourth peer downloads with --json: one JSON object with the contract's fields.
  c.add_peer();
  const auto out2 = c.path("got2") / "movie.bin";
  {
    const auto r = c.on_peer(3, "request-file", {"--file-id", id, "--out", out2.string(), "--json"});
    INFO(describe(r));
    REQUIRE(r.exit_code == 0);
    const auto j = parse_json(r);
    REQUIRE(j.is_object());
    CHECK(j["file_id"] == id);
    CHECK(j["path"] == out2.string());
    CHECK(j["size"] == size);
    REQUIRE(j["bytes_received"].is_number_unsigned());
    CHECK(j["bytes_received"].get<std::uint64_t>() >= size);
    REQUIRE(j["seconds"].is_number());
    CHECK(j["seconds"].get<double>() >= 0.0);
  }
  CHECK(files_equal(a, out2));
}

TEST_CASE("request-file without --out puts the file in the download dir under its name", "[e2e]") {
  Cluster c(2);
  const auto a = c.make_file("report.pdf", 300000, 3);
  const std::string id = c.register_file(0, a);
  REQUIRE(c.wait_holders(id, 1));
  const auto r = c.on_peer(1, "request-file", {"--file-id", id});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto expected = c.peer(1).download_dir / "report.pdf";
  CHECK(r.out == expected.string() + "\n");
  CHECK(files_equal(a, expected));
}

TEST_CASE("stop-sharing withdraws a file: no longer listed as held and no longer in status", "[e2e]") {
  Cluster c(2);
  const auto a = c.make_file("gone.bin", kChunkSize + 5, 9);
  const std::string id = c.register_file(0, a);
  CHECK(c.register_file(1, a) == id);
  REQUIRE(c.wait_holders(id, 2));

  const auto r = c.on_peer(0, "stop-sharing", {"--file-id", id});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(r.out.empty());
  REQUIRE(wait_for([&] {
    const auto addrs = c.live_addrs(id);
    return addrs && *addrs == std::vector<std::string>{c.peer(1).addr};
  }));
  CHECK(c.holders(id) == 1);
  const auto status = c.on_peer(0, "status", {"--json"});
  REQUIRE(status.exit_code == 0);
  CHECK(parse_json(status)["shared"].empty());
  // Stopping it again: this peer does not share it.
  const auto again = c.on_peer(0, "stop-sharing", {"--file-id", id});
  CHECK(again.exit_code == 1);
  CHECK(again.out.empty());
  CHECK(lines_of(again.err).size() == 1);
  // The file itself is untouched.
  CHECK(fs::exists(a));
}
