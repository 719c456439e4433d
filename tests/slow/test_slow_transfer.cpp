// Slow transfers (release stage only): a sparse file over 4 GiB with bounded
// memory, rate-limit accuracy over seconds, and a swarm of four downloaders
// fed by one rate-limited seed.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <random>
#include <sstream>
#include <utility>
#include <vector>

#include "e2e.hpp"
#include "support/build_kind.hpp"

using namespace p2pshare::test;

namespace {

constexpr std::uint64_t kGiB = 1024 * kMiB;

ClusterOptions slow_options() {
  ClusterOptions o;
  o.request_timeout_ms = 15000;  // the peer-server's default
  return o;
}

// The rate of a download of `size` bytes on peer i while 10% to 90% of it
// is received: the least-squares slope of the bytes held against time, from
// `status --json` polled while it runs. The start (holders, connections,
// handshakes) and the end (fsync, rename) are left out: how long they take
// depends on the machine's load, not on a rate limit. A slope over every
// sample, not the first and last alone, keeps the steps of whole chunks
// becoming held and the time a status call takes from deciding the figure.
// Each sample's time is the middle of its status call, and a call that
// took 200 ms or more is not a sample.
double steady_rate(Cluster& c, std::size_t i, const std::string& id, const fs::path& src, const fs::path& out,
                   std::uint64_t size) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kSampleSpread = std::chrono::milliseconds(200);
  auto download = c.request_in_background(i, id, out);
  const auto started = Clock::now();
  std::vector<std::pair<double, double>> samples;  // seconds since start, bytes held
  const bool seen = wait_for(
      [&] {
        const auto before = Clock::now();
        const auto j = c.status_json(i);
        const auto took = Clock::now() - before;
        const auto at = before + took / 2;
        std::uint64_t have = 0;
        bool listed = false;
        if (j.is_object()) {
          for (const auto& d : j.value("downloads", nlohmann::json::array())) {
            if (d.value("file_id", "") == id) {
              have = d.value("have_bytes", std::uint64_t{0});
              listed = true;
            }
          }
        }
        // A call the machine held up (process start, page faults) says
        // little about when its figure was read: such samples are dropped.
        if (listed && have >= size / 10 && have <= size / 10 * 9 && took < kSampleSpread) {
          samples.emplace_back(std::chrono::duration<double>(at - started).count(), static_cast<double>(have));
        }
        return (listed && have > size / 10 * 9) || !download->running();
      },
      60s);
  REQUIRE(seen);
  REQUIRE(download->wait(60s) == 0);
  CHECK(files_equal(src, out));
  INFO(samples.size() << " samples between 10% and 90%");
  REQUIRE(samples.size() >= 8);
  REQUIRE(samples.back().second - samples.front().second >= static_cast<double>(size) / 2);
  double mean_t = 0;
  double mean_b = 0;
  for (const auto& [t, b] : samples) {
    mean_t += t;
    mean_b += b;
  }
  mean_t /= static_cast<double>(samples.size());
  mean_b /= static_cast<double>(samples.size());
  double covariance = 0;
  double variance = 0;
  for (const auto& [t, b] : samples) {
    covariance += (t - mean_t) * (b - mean_b);
    variance += (t - mean_t) * (t - mean_t);
  }
  REQUIRE(variance > 0);
  return covariance / variance;
}

}  // namespace

// 7 -------------------------------------------------------------------------

TEST_CASE("a sparse file over 4 GiB transfers intact with bounded memory", "[slow]") {
  Cluster c(2, slow_options());
  const std::uint64_t size = 4 * kGiB + 300 * kMiB + 1;
  const auto src = c.files() / "huge.img";
  {
    const int fd = ::open(src.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
    std::mt19937_64 rng(71);
    // Data at the start, across and just above the 4 GiB mark, and at the very end.
    for (const std::uint64_t offset : {std::uint64_t{0}, 4 * kGiB - 100, 4 * kGiB + 12345, size - 4096}) {
      std::vector<unsigned char> block(4096);
      for (auto& b : block) b = static_cast<unsigned char>(rng());
      REQUIRE(::pwrite(fd, block.data(), block.size(), static_cast<off_t>(offset)) ==
              static_cast<ssize_t>(block.size()));
    }
    ::close(fd);
  }
  REQUIRE(fs::file_size(src) == size);

  auto started = std::chrono::steady_clock::now();
  const auto reg = c.on_peer(0, "register-file", {"--path", src.string(), "--json"}, 300s);
  INFO(describe(reg));
  REQUIRE(reg.exit_code == 0);
  const double hash_seconds = elapsed_since(started);
  const auto registered = parse_json(reg);
  const std::string id = registered["file_id"];
  CHECK(registered["size"] == size);
  CHECK(registered["chunks"] == chunks_for(size));
  REQUIRE(c.wait_holders(id, 1));

  const auto out = c.path("got") / "huge.img";
  started = std::chrono::steady_clock::now();
  const auto r = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string(), "--json"}, 600s);
  const double download_seconds = elapsed_since(started);
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  const auto j = parse_json(r);
  CHECK(j["size"] == size);
  CHECK(j["bytes_received"] == size);
  const std::uint64_t seed_peak = peak_rss_kib(c.peer(0).process->pid());
  const std::uint64_t downloader_peak = peak_rss_kib(c.peer(1).process->pid());
  REQUIRE(fs::file_size(out) == size);
  started = std::chrono::steady_clock::now();
  CHECK(files_equal(src, out));
  const double compare_seconds = elapsed_since(started);
  WARN("4 GiB + 300 MiB + 1: register " << hash_seconds << " s, download " << download_seconds << " s ("
                                        << static_cast<double>(size) / kMiB / download_seconds << " MiB/s), compare "
                                        << compare_seconds << " s; peak RSS: seed " << seed_peak / 1024
                                        << " MiB, downloader " << downloader_peak / 1024 << " MiB");
  CHECK(downloader_peak > 0);
  CHECK(downloader_peak < 200 * 1024 * kMemoryBoundFactor);
  CHECK(seed_peak < 200 * 1024 * kMemoryBoundFactor);
  // The multi-GiB copy goes now, not at the end of the run.
  fs::remove(out);
  fs::remove(src);
}

// 8 -------------------------------------------------------------------------

TEST_CASE("rate limits hold within 10% over five seconds for --upload-limit and --download-limit", "[slow][timing]") {
  // The rate while the bytes flow, 10% to 90% of 20 MiB (some 4 s at
  // 4 MiB/s): within 10% of the limit.
  const std::uint64_t size = 20 * kMiB;
  const double limit = 4.0 * kMiB;
  SECTION("--upload-limit 4M on the seed") {
    Cluster c(2, slow_options());
    const auto src = c.make_file("up.bin", size, 81);
    c.start_peer_with(0, {"--upload-limit", "4M"});
    const auto id = c.register_file(0, src);
    REQUIRE(c.wait_holders(id, 1));
    const double rate = steady_rate(c, 1, id, src, c.path("got") / "up.bin", size);
    WARN("20 MiB at --upload-limit 4M: " << rate / kMiB << " MiB/s while it flowed");
    if (kTimingAsserted) {
      CHECK(rate < limit * 1.1);
      CHECK(rate > limit * 0.9);
    }
  }
  SECTION("--download-limit 4M on the downloader") {
    Cluster c(2, slow_options());
    const auto src = c.make_file("down.bin", size, 82);
    const auto id = c.register_file(0, src);
    REQUIRE(c.wait_holders(id, 1));
    c.start_peer_with(1, {"--download-limit", "4M"});
    const double rate = steady_rate(c, 1, id, src, c.path("got") / "down.bin", size);
    WARN("20 MiB at --download-limit 4M: " << rate / kMiB << " MiB/s while it flowed");
    if (kTimingAsserted) {
      CHECK(rate < limit * 1.1);
      CHECK(rate > limit * 0.9);
    }
  }
}

// 9 -------------------------------------------------------------------------

TEST_CASE("one seed at 4 MiB/s and four downloaders of 32 MiB: near the one-copy time", "[slow][timing]") {
  Cluster c(5, slow_options());
  const std::uint64_t size = 32 * kMiB;
  const double ideal = static_cast<double>(size) / (4.0 * kMiB);  // 8 s
  const auto src = c.make_file("swarm.bin", size, 91);
  c.start_peer_with(0, {"--upload-limit", "4M"});
  const auto id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  std::vector<fs::path> outs;
  std::vector<std::unique_ptr<Process>> requests;
  const auto started = std::chrono::steady_clock::now();
  for (std::size_t i = 1; i <= 4; ++i) {
    outs.push_back(c.path("got" + std::to_string(i)) / "swarm.bin");
    requests.push_back(c.request_in_background(i, id, outs.back()));
  }
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
        return !running;
      },
      120s);
  const double elapsed = elapsed_since(started);
  REQUIRE(all_done);
  std::vector<double> reported;
  for (std::size_t k = 0; k < 4; ++k) {
    RunResult r{requests[k]->wait(1s).value_or(-1), requests[k]->out(), requests[k]->err()};
    INFO("downloader " << k + 1 << ": " << describe(r));
    CHECK(r.exit_code == 0);
    if (r.exit_code == 0) reported.push_back(parse_json(r)["seconds"].get<double>());
    CHECK(files_equal(src, outs[k]));
  }
  const auto uploaded = c.uploaded(0, id);
  REQUIRE(uploaded);
  const double copies = static_cast<double>(*uploaded) / static_cast<double>(size);
  std::ostringstream figures;
  figures << "4 x 32 MiB from one seed at 4 MiB/s: all done in " << elapsed << " s (ideal " << ideal << " s, limit "
          << 1.6 * ideal << " s); finish times";
  for (double t : done_at) figures << " " << t;
  figures << " s; request-file seconds";
  for (double t : reported) figures << " " << t;
  figures << "; the seed uploaded " << copies << " copies";
  WARN(figures.str());
  if (kTimingAsserted) CHECK(elapsed < 1.6 * ideal);
  // docs/benchmarks.md: each chunk leaves the seed about once (1.00-1.01
  // copies measured here); 1.1 leaves room for an endgame duplicate or two.
  CHECK(copies < 1.1);
}
