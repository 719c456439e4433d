// Transfers under stress: sources that die or lie, a downloader killed and
// restarted, the last holder leaving, a swarm that shares among its
// downloaders, and the rate limits. Rate limits stretch each transfer over a
// few seconds so that a test can act half-way through without large files.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <fstream>
#include <sstream>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

// Rate-limited transfers keep requests queued at a source for a while:
// a request timeout of seconds would drop a slow but healthy source.
ClusterOptions transfer_options() {
  ClusterOptions o;
  o.request_timeout_ms = 10000;
  return o;
}

// Overwrites `bytes` bytes at `offset` with something else, keeping the size.
void corrupt(const fs::path& file, std::uint64_t offset, std::size_t bytes) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f);
  std::string old(bytes, '\0');
  f.seekg(static_cast<std::streamoff>(offset));
  f.read(old.data(), static_cast<std::streamsize>(bytes));
  for (auto& ch : old) ch = static_cast<char>(~static_cast<unsigned char>(ch));
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(old.data(), static_cast<std::streamsize>(bytes));
  REQUIRE(f);
}

// Hidden partial files (.p2pshare-<id>.part) in `dir`.
std::vector<fs::path> part_files(const fs::path& dir) {
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    if (name.rfind(".p2pshare-", 0) == 0 && name.size() > 5 && name.substr(name.size() - 5) == ".part") {
      found.push_back(e.path());
    }
  }
  return found;
}

}  // namespace

// 1 -------------------------------------------------------------------------

TEST_CASE("transfer: a source SIGKILLed mid-download: the download finishes from the other one", "[e2e][transfer]") {
  Cluster c(3, transfer_options());
  const std::uint64_t size = 12 * kMiB;
  const auto a = c.make_file("film.bin", size, 11, "a");
  const auto b = c.make_file("film.bin", size, 11, "b");
  c.start_peer_with(0, {"--upload-limit", "3M"});
  c.start_peer_with(1, {"--upload-limit", "3M"});
  const auto id = c.register_file(0, a);
  REQUIRE(c.register_file(1, b) == id);
  REQUIRE(c.wait_holders(id, 2));

  const auto out = c.path("got") / "film.bin";
  auto request = c.request_in_background(2, id, out);
  // Both sources in use and a fifth of the file here.
  const bool under_way = wait_for(
      [&] {
        const auto d = c.download_entry(2, id);
        return d.is_object() && d.value("peers", 0) == 2 && d.value("have_bytes", std::uint64_t{0}) >= size / 5;
      },
      20s);
  REQUIRE(under_way);
  const auto before = c.have_bytes(2, id);
  INFO("have_bytes when the source was killed: " << before);
  CHECK(before < size);
  Cluster::kill(c.peer(0));

  const auto r = finish_process(*request, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto j = parse_json(r);
  CHECK(j["size"] == size);
  CHECK(j["path"] == out.string());
  CHECK(files_equal(a, out));
  CHECK(part_files(out.parent_path()).empty());
}

// 2 -------------------------------------------------------------------------

TEST_CASE("transfer: a source whose copy was corrupted on disk cannot spoil the download", "[e2e][transfer]") {
  Cluster c(3, transfer_options());
  const std::uint64_t size = 12 * kChunkSize;
  const auto good = c.make_file("data.bin", size, 21, "good");
  const auto bad = c.make_file("data.bin", size, 21, "bad");
  // The honest source is slower, so that most requests go to the liar.
  c.start_peer_with(0, {"--upload-limit", "1M"});
  const auto id = c.register_file(0, good);
  REQUIRE(c.register_file(1, bad) == id);
  REQUIRE(c.wait_holders(id, 2));
  // After registering: same size, a few bytes changed in chunks 1, 5 and 9.
  for (std::uint64_t chunk : {1, 5, 9}) corrupt(bad, chunk * kChunkSize + 1000 + chunk * 77, 16);
  REQUIRE(fs::file_size(bad) == size);
  REQUIRE_FALSE(files_equal(good, bad));

  const auto out = c.path("got") / "data.bin";
  const auto r = c.on_peer(2, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  CHECK(files_equal(good, out));
  // The corrupted source notices its copy changed (at its first request or
  // its 2 s sweep) and withdraws it; timing-dependent, so only reported.
  if (!contains_ci(c.peer(1).process->err(), "changed on disk")) {
    WARN("the corrupted source did not notice its change before the download ended");
  }
}

// The only source's copy was corrupted after registering: it refuses to serve it; 3 s
// without a source fail the download.
TEST_CASE("transfer: a corrupted copy as the only source: the request fails and nothing is put at --out",
          "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 12 * kChunkSize;
  const auto original = c.make_file("data.bin", size, 22, "orig");
  const auto bad = c.make_file("data.bin", size, 22, "bad");
  const auto id = c.register_file(0, bad);
  REQUIRE(c.wait_holders(id, 1));
  for (std::uint64_t chunk : {1, 5, 9}) corrupt(bad, chunk * kChunkSize + 4321, 16);

  const auto out = c.path("got") / "data.bin";
  // The seed sees its copy changed, sends none of it and withdraws it; then
  // 3 s without a source: 15 s is a hang.
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()}, 15s);
  check_fails("request-file from a corrupted only source", r, 1);
  CHECK_FALSE(fs::exists(out));
  CHECK(contains_ci(c.peer(0).process->err(), "changed on disk"));
  CHECK_FALSE(contains_ci(c.peer(1).process->err(), "failed its hash"));
  (void)original;
}

// 3 -------------------------------------------------------------------------

TEST_CASE("transfer: a downloader SIGKILLed half-way resumes after a restart and fetches only what it lacked",
          "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 16 * kMiB;
  const auto src = c.make_file("big.bin", size, 31);
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  c.start_peer_with(1, {"--download-limit", "4M"});

  const auto out = c.path("got") / "big.bin";
  auto request = c.request_in_background(1, id, out);
  // The resume state is saved about once a second; at 4 MiB/s that is a
  // quarter of the file, so the kill comes well past the half-way mark.
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) >= size * 6 / 10; }, 20s));
  const auto at_kill = c.have_bytes(1, id);
  Cluster::kill(c.peer(1));
  // The client loses its peer-server: it exits (an error) rather than hang.
  {
    const auto r = finish_process(*request, 10s);
    INFO(describe(r));
    CHECK(r.exit_code != 0);
    CHECK(r.exit_code != -1);
  }
  CHECK_FALSE(fs::exists(out));
  CHECK(part_files(out.parent_path()).size() == 1);

  c.start_peer_with(1, {"--download-limit", "4M"});
  // The restarted peer-server goes on with the download by itself.
  nlohmann::json seen;
  const bool resumed = wait_for(
      [&] {
        seen = c.download_entry(1, id);
        if (!seen.is_object()) return fs::exists(out);  // it may even have finished already
        return seen.value("bytes_received", std::uint64_t{0}) > 0;
      },
      15s);
  INFO("have_bytes at the kill: " << at_kill << "; status after the restart: " << seen.dump());
  CHECK(resumed);

  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto j = parse_json(r);
  CHECK(j["path"] == out.string());
  CHECK(j["size"] == size);
  const auto received = j["bytes_received"].get<std::uint64_t>();
  WARN("downloader killed at have_bytes " << at_kill << " of " << size << "; after the restart it received " << received
                                          << " (" << 100.0 * static_cast<double>(received) / size << "% of the file)");
  CHECK(received < size * 3 / 4);
  CHECK(files_equal(src, out));
  CHECK(part_files(out.parent_path()).empty());
}

// 4 -------------------------------------------------------------------------

TEST_CASE("transfer: the only source stops mid-download: the request fails, the partial data stays",
          "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("lonely.bin", size, 41);
  c.start_peer_with(0, {"--upload-limit", "2M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("got") / "lonely.bin";
  const auto started = std::chrono::steady_clock::now();
  auto request = c.request_in_background(1, id, out);
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) >= size / 4; }, 20s));
  CHECK(Cluster::stop(c.peer(0), SIGTERM) == 0);

  const auto r = finish_process(*request, 15s);
  INFO("the request ended after " << elapsed_since(started) << " s");
  // Run with --json: the one line on stderr, and the failure's kind on stdout.
  check_fails("request-file when the last holder left", RunResult{r.exit_code, "", r.err}, 1, {"holder"});
  CHECK(parse_json(r)["error"]["code"] == "no_holders");
  CHECK_FALSE(fs::exists(out));
  CHECK(part_files(out.parent_path()).size() == 1);
  const auto d = c.download_entry(1, id);
  INFO(d.dump());
  CHECK(d.is_object());
}

TEST_CASE("transfer: request-file --wait started while no holder is live completes once the source is back",
          "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("patient.bin", size, 42);
  c.start_peer_with(0, {"--upload-limit", "2M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("got") / "patient.bin";
  auto first = c.request_in_background(1, id, out);
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) >= size / 4; }, 20s));
  CHECK(Cluster::stop(c.peer(0), SIGTERM) == 0);
  // The downloader itself is listed as a (partial) holder; nobody else is.
  REQUIRE(wait_for([&] {
    const auto addrs = c.live_addrs(id);
    return addrs && (addrs->empty() || *addrs == std::vector<std::string>{c.peer(1).addr});
  }));

  // No holder is live now.
  auto waiting = c.request_in_background(1, id, out, {"--wait"});
  REQUIRE(wait_for([&] {
    const auto d = c.download_entry(1, id);
    return d.is_object() && d.value("state", "") == "waiting for holders";
  }));
  CHECK(waiting->running());
  // Half a file is here, hidden, and nothing at --out yet.
  CHECK_FALSE(fs::exists(out));
  CHECK(part_files(out.parent_path()).size() == 1);

  c.start_peer_with(0, {});
  const auto r = finish_process(*waiting, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto j = parse_json(r);
  CHECK(j["path"] == out.string());
  CHECK(files_equal(src, out));
  CHECK(part_files(out.parent_path()).empty());
  // The first request either failed when the source left or, still
  // attached, finished with the second one: it must not hang.
  const auto f = finish_process(*first, 10s);
  INFO(describe(f));
  CHECK((f.exit_code == 0 || f.exit_code == 1));
}

// A download retried in the same peer-server process starts from the chunks
// it has now, not from the record's state when it first started.
TEST_CASE("transfer: a failed download retried in the same peer-server fetches only what it lacked",
          "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("again.bin", size, 43);
  c.start_peer_with(0, {"--upload-limit", "2M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("got") / "again.bin";
  auto first = c.request_in_background(1, id, out);
  REQUIRE(wait_for([&] { return c.have_bytes(1, id) >= size / 2; }, 20s));
  CHECK(Cluster::stop(c.peer(0), SIGTERM) == 0);
  // The download fails 3 s after its last source left, keeping what it has.
  const auto f = finish_process(*first, 12s);
  INFO("first request: " << describe(f));
  REQUIRE(f.exit_code == 1);
  const auto had = c.have_bytes(1, id);

  c.start_peer_with(0, {});
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  CHECK(files_equal(src, out));
  const auto received = parse_json(r)["bytes_received"].get<std::uint64_t>();
  INFO("had " << had << " bytes before the retry; the retry received " << received << " of " << size);
  CHECK(received <= size - had + 2 * kChunkSize);
}

// 5 -------------------------------------------------------------------------

TEST_CASE("transfer: four downloaders at once share among themselves instead of each taking a copy from the seed",
          "[e2e][transfer]") {
  Cluster c(5, transfer_options());
  const std::uint64_t size = 6 * kMiB;
  const double rate = 2.0 * kMiB;
  const auto src = c.make_file("shared.bin", size, 51);
  c.start_peer_with(0, {"--upload-limit", "2M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  std::vector<fs::path> outs;
  std::vector<std::unique_ptr<Process>> requests;
  const auto started = std::chrono::steady_clock::now();
  for (std::size_t i = 1; i <= 4; ++i) {
    outs.push_back(c.path("got" + std::to_string(i)) / "shared.bin");
    requests.push_back(c.request_in_background(i, id, outs.back()));
  }
  // While they run: does the central server list partial holders?
  bool saw_partial = false;
  std::vector<double> done_at(4, 0);
  const bool all_done = wait_for(
      [&] {
        bool running = false;
        for (std::size_t k = 0; k < 4; ++k) {
          if (requests[k]->running()) {
            running = true;
          } else if (done_at[k] == 0) {
            done_at[k] = elapsed_since(started);
          }
        }
        if (!running) return true;
        if (!saw_partial) {
          const auto r = c.on_central("file-info", {"--file-id", id, "--json"});
          if (r.exit_code == 0) {
            const auto info = nlohmann::json::parse(r.out, nullptr, false);
            if (info.is_object()) {
              for (const auto& h : info.value("holders", nlohmann::json::array())) {
                if (h.value("addr", "") != c.peer(0).addr && !h.value("complete", true)) saw_partial = true;
              }
            }
          }
        }
        return false;
      },
      60s);
  const double elapsed = elapsed_since(started);
  REQUIRE(all_done);
  for (std::size_t k = 0; k < 4; ++k) {
    const auto r = finish_process(*requests[k], 1s);
    INFO("downloader " << k + 1 << ": " << describe(r));
    CHECK(r.exit_code == 0);
    CHECK(files_equal(src, outs[k]));
  }
  const auto uploaded = c.uploaded(0, id);
  REQUIRE(uploaded);
  const double single = static_cast<double>(size) / rate;
  const double copies = static_cast<double>(*uploaded) / static_cast<double>(size);
  std::ostringstream figures;
  figures << "swarm of 4 x " << size / kMiB << " MiB from one seed at 2 MiB/s: all done in " << elapsed
          << " s (one copy alone: " << single << " s; four: " << 4 * single << " s); finish times";
  for (double t : done_at) figures << " " << t;
  figures << " s; the seed uploaded " << copies << " copies; partial holders listed: " << saw_partial;
  WARN(figures.str());
  if (kTimingAsserted) CHECK(elapsed < 0.75 * 4 * single);
  // The seed answers "busy" for chunks another downloader has or asked it
  // for, so each chunk leaves it once: 1.00 copies here in release, against
  // 1.7-2.0 before it did (each downloader then took a share of duplicates).
  // Who gets which chunk first is timing, and most of it is start-up: until
  // the downloaders have linked to each other (a holder refresh, then TLS
  // handshakes), a repeated request to the seed is served. On 6 MiB that
  // start-up weighs: release runs on a machine loaded by other builds gave
  // up to 1.29 (2 of 14 runs over 1.25), a sanitizer's slowdown more. So
  // here the bound is loose (clearly below the 1.7-2.0 of before), and the
  // slow tier holds the documented < 1.1 on a transfer long enough for
  // start-up not to count.
  if (kTimingAsserted) CHECK(copies < 1.5);
  CHECK(copies < 2.0);
  CHECK(saw_partial);
}

// 6 -------------------------------------------------------------------------

// Within ±15% here: the [slow] tier checks 10% over a longer transfer.
TEST_CASE("transfer: --upload-limit on the seed paces a download", "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("paced.bin", size, 61);
  c.start_peer_with(0, {"--upload-limit", "2M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  const auto out = c.path("got") / "paced.bin";
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const double seconds = parse_json(r)["seconds"].get<double>();
  WARN("8 MiB at --upload-limit 2M: " << seconds << " s (ideal 4 s)");
  if (kTimingAsserted) {
    CHECK(seconds > 4.0 * 0.85);
    CHECK(seconds < 4.0 * 1.15);
  }
  CHECK(files_equal(src, out));
}

TEST_CASE("transfer: --download-limit on the downloader paces a download from an unlimited seed", "[e2e][transfer]") {
  Cluster c(2, transfer_options());
  const std::uint64_t size = 8 * kMiB;
  const auto src = c.make_file("paced.bin", size, 62);
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  c.start_peer_with(1, {"--download-limit", "2M"});
  const auto out = c.path("got") / "paced.bin";
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 30s);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const double seconds = parse_json(r)["seconds"].get<double>();
  WARN("8 MiB at --download-limit 2M: " << seconds << " s (ideal 4 s)");
  if (kTimingAsserted) {
    CHECK(seconds > 4.0 * 0.85);
    CHECK(seconds < 4.0 * 1.15);
  }
  CHECK(files_equal(src, out));
}
