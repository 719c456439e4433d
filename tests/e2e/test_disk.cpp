// Disk trouble on the downloader: a clear error on that request, the partial
// data kept, and the peer-server goes on serving everything else.
#include <catch2/catch.hpp>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

// A peer-server whose files may not grow past `max_file_bytes` (ulimit -f):
// a write past it fails as a full disk would, without needing a small disk.
std::unique_ptr<Process> cramped_peer(Cluster& c, const fs::path& data_dir, std::uint64_t max_file_bytes) {
  auto p = std::make_unique<Process>(
      std::vector<std::string>{"/usr/bin/prlimit", "--fsize=" + std::to_string(max_file_bytes), binary(), "peer-server",
                               "--central-server-addr", c.central_addr(), "--addr", "127.0.0.1:0", "--data-dir",
                               data_dir.string(), "--holder-refresh", "200"},
      c.logs());
  return p;
}

}  // namespace

TEST_CASE("a write that fails fails that download with one clear line, keeps the partial data, and the peer serves on",
          "[e2e][disk]") {
  Cluster c(2);
  const auto big = c.make_file("big.bin", 40 * kChunkSize, 21);  // 10 MiB: over the limit below
  const auto small = c.make_file("small.bin", 2 * kChunkSize, 22);
  const std::string big_id = c.register_file(0, big);
  const fs::path data = c.path("cramped");
  auto cramped = cramped_peer(c, data, 4 * 1024 * 1024);
  const std::string addr = cramped->wait_listening();
  auto control = [&](std::vector<std::string> args) {
    std::vector<std::string> full{args.front(), "--peer-addr", addr, "--data-dir", data.string()};
    full.insert(full.end(), args.begin() + 1, args.end());
    return c.run(full);
  };
  // It shares a small file of its own before the trouble.
  const auto reg = control({"register-file", "--path", small.string()});
  REQUIRE(reg.exit_code == 0);
  const std::string small_id = reg.out.substr(0, 64);

  const auto out = c.path("dl") / "big.bin";
  const auto r = control({"request-file", "--file-id", big_id, "--out", out.string()});
  check_fails("request-file past the file-size limit", r, 1, {"too large"});
  CHECK_FALSE(fs::exists(out));
  bool partial_kept = false;
  for (const auto& entry : fs::directory_iterator(out.parent_path())) {
    partial_kept = partial_kept || entry.path().filename().string().rfind(".p2pshare-", 0) == 0;
  }
  CHECK(partial_kept);
  // The status tells what happened to that download.
  const auto status = parse_json(control({"status", "--json"}));
  REQUIRE(status["downloads"].size() == 1);
  CHECK(status["downloads"][0]["state"].get<std::string>().find("failed") == 0);
  // Asked again, it fails the same way, and says which kind of failure it is:
  // an I/O error, not "no holders".
  const auto again = control({"request-file", "--file-id", big_id, "--out", out.string(), "--json"});
  CHECK(again.exit_code == 1);
  const auto answer = parse_json(again);
  CHECK(answer["error"]["code"] == "io");
  CHECK(contains_ci(answer["error"]["message"].get<std::string>(), "too large"));
  // Still running, still serving its own file to others.
  CHECK(cramped->running());
  const auto got = c.path("small-copy.bin");
  CHECK(c.on_peer(1, "request-file", {"--file-id", small_id, "--out", got.string()}).exit_code == 0);
  CHECK(files_equal(small, got));
}
