// The file id as docs/protocol.md defines it, computed by an independent
// implementation (scripts/file_id.sh: coreutils only) must equal the id the
// real binary prints for the same bytes.
#include <catch2/catch.hpp>

#include <filesystem>

#include "support/process.hpp"
#include "support/temp_dir.hpp"

using namespace p2pshare::test;

namespace {
std::string shell_file_id(const std::filesystem::path& file, const TempDir& dir) {
  const std::filesystem::path script = std::filesystem::path(P2PSHARE_SOURCE_DIR) / "scripts/file_id.sh";
  auto r = run({"/bin/bash", script.string(), file.string()}, dir.path());
  REQUIRE(r.exit_code == 0);
  return r.out.substr(0, 64);
}
}  // namespace

TEST_CASE("file id matches the documented canonical encoding", "[e2e][protocol]") {
  TempDir dir;
  auto central =
      std::make_unique<Process>(std::vector<std::string>{P2PSHARE_BINARY, "central-server", "--addr", "127.0.0.1:0",
                                                         "--data-dir", (dir / "central").string()},
                                dir.path());
  const std::string central_addr = central->wait_listening();
  Process peer({P2PSHARE_BINARY, "peer-server", "--central-server-addr", central_addr, "--addr", "127.0.0.1:0",
                "--data-dir", (dir / "peer").string()},
               dir.path());
  const std::string peer_addr = peer.wait_listening();
  // 0 bytes, 1 byte, exactly one chunk, one chunk and a byte.
  for (std::uint64_t size : {0ull, 1ull, 262144ull, 262145ull, 1000000ull}) {
    const auto file = dir / ("f" + std::to_string(size));
    write_random_file(file, size, size + 11);
    auto r = run({P2PSHARE_BINARY, "register-file", "--path", file.string(), "--peer-addr", peer_addr, "--data-dir",
                  (dir / "peer").string()},
                 dir.path());
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == shell_file_id(file, dir) + "\n");
  }
}
