// A shared or downloaded file that changes under the peer-server (deleted,
// truncated, written in place) is noticed without anyone asking: the peer
// stops listing it as seeding, the central server stops counting it as a
// holder, and a new request-file fetches the file again instead of answering
// with the stale path. A file written with the very same bytes stays shared.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <functional>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

constexpr std::uint64_t kSize = 6 * kChunkSize + 1234;

bool lists_as_seeding(Cluster& c, std::size_t i, const std::string& id) {
  const auto r = c.on_peer(i, "status", {"--json"});
  if (r.exit_code != 0) return true;  // cannot tell: not yet withdrawn
  const auto status = parse_json(r);
  for (const auto& shared : status["shared"]) {
    if (shared["file_id"] == id) return true;
  }
  return false;
}

// Writes `bytes` at `offset` without truncating: the same inode, the same size.
void overwrite(const fs::path& path, std::uint64_t offset, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

// peer0 registers, peer1 downloads; `change` alters peer1's copy. peer1 must
// withdraw it by itself, and fetch it again from peer0 when asked.
void downloaded_copy_changes(const std::function<void(const fs::path&)>& change) {
  Cluster c(2);
  const auto src = c.make_file("f.bin", kSize, 61);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  const auto first = c.on_peer(1, "request-file", {"--file-id", id, "--json"});
  INFO(describe(first));
  REQUIRE(first.exit_code == 0);
  const fs::path copy = parse_json(first)["path"].get<std::string>();
  REQUIRE(files_equal(src, copy));
  REQUIRE(wait_for([&] { return c.is_live(1, id); }, 10s));
  REQUIRE(lists_as_seeding(c, 1, id));

  change(copy);

  // Noticed by the periodic check (every 2 s), with nobody asking.
  CHECK(wait_for([&] { return !lists_as_seeding(c, 1, id); }, 15s));
  CHECK(wait_for([&] { return !c.is_live(1, id); }, 15s));
  CHECK(c.is_live(0, id));

  const auto again = c.on_peer(1, "request-file", {"--file-id", id, "--json"});
  INFO(describe(again));
  REQUIRE(again.exit_code == 0);
  const auto json = parse_json(again);
  const fs::path path = json["path"].get<std::string>();
  CHECK(files_equal(src, path));
  CHECK(json["bytes_received"].get<std::int64_t>() >= static_cast<std::int64_t>(kSize));
  CHECK(wait_for([&] { return lists_as_seeding(c, 1, id) && c.is_live(1, id); }, 15s));
}

}  // namespace

TEST_CASE("a downloaded file deleted under the peer is withdrawn and fetched again", "[e2e]") {
  downloaded_copy_changes([](const fs::path& copy) { REQUIRE(fs::remove(copy)); });
}

TEST_CASE("a downloaded file truncated under the peer is withdrawn and fetched again", "[e2e]") {
  downloaded_copy_changes([](const fs::path& copy) { fs::resize_file(copy, kSize / 2); });
}

TEST_CASE("a downloaded file rewritten in place with other bytes is withdrawn and fetched again", "[e2e]") {
  downloaded_copy_changes([](const fs::path& copy) { overwrite(copy, 3 * kChunkSize + 7, std::string(4096, 'x')); });
}

TEST_CASE("a deleted file is fetched again by the next request-file, not answered with its old path", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("f.bin", kSize, 62);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  const auto first = c.on_peer(1, "request-file", {"--file-id", id, "--json"});
  REQUIRE(first.exit_code == 0);
  const fs::path copy = parse_json(first)["path"].get<std::string>();
  REQUIRE(fs::remove(copy));
  // At once, before any periodic check could have run.
  const auto again = c.on_peer(1, "request-file", {"--file-id", id, "--json"});
  INFO(describe(again));
  REQUIRE(again.exit_code == 0);
  const fs::path path = parse_json(again)["path"].get<std::string>();
  REQUIRE(fs::exists(path));
  CHECK(files_equal(src, path));
}

TEST_CASE("the owner's registered file deleted is withdrawn and the owner gets it back from a holder", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("own.bin", kSize, 63);
  const auto reference = c.make_file("own.bin", kSize, 63, "reference");  // the same bytes, kept aside
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  REQUIRE(c.on_peer(1, "request-file", {"--file-id", id}).exit_code == 0);
  REQUIRE(c.wait_holders(id, 2));

  REQUIRE(fs::remove(src));
  CHECK(wait_for([&] { return !lists_as_seeding(c, 0, id); }, 15s));
  CHECK(wait_for([&] { return !c.is_live(0, id); }, 15s));
  CHECK(c.is_live(1, id));

  const auto back = c.on_peer(0, "request-file", {"--file-id", id, "--out", src.string(), "--json"});
  INFO(describe(back));
  REQUIRE(back.exit_code == 0);
  CHECK(files_equal(reference, src));
}

TEST_CASE("a file written again with the very same bytes is re-verified and stays shared", "[e2e]") {
  Cluster c(2);
  const auto src = c.make_file("same.bin", kSize, 64);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));
  // The same bytes back in place: a new mtime and ctime, nothing else.
  std::string head(4096, '\0');
  {
    const int fd = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::pread(fd, head.data(), head.size(), 0) == static_cast<ssize_t>(head.size()));
    ::close(fd);
  }
  overwrite(src, 0, head);
  // It is re-hashed (the log says so) and still served.
  REQUIRE(wait_for([&] { return c.peer(0).process->err().find("still matches") != std::string::npos; }, 15s));
  CHECK(lists_as_seeding(c, 0, id));
  CHECK(c.is_live(0, id));
  const auto out = c.path("out") / "same.bin";
  const auto got = c.on_peer(1, "request-file", {"--file-id", id, "--out", out.string()});
  INFO(describe(got));
  REQUIRE(got.exit_code == 0);
  CHECK(files_equal(src, out));
}

TEST_CASE("a file kept across a restart is not hashed again and one rewritten while stopped is withdrawn", "[e2e]") {
  Cluster c(1);
  const auto src = c.make_file("off.bin", kSize, 65);
  const std::string id = c.register_file(0, src);
  REQUIRE(c.wait_holders(id, 1));

  // Unchanged across a restart: its identity in peer.db still matches, so it
  // is not hashed again (over 2 sweeps of 2 s).
  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  c.start_peer(0);
  REQUIRE(c.wait_live(0));
  CHECK_FALSE(wait_for([&] { return c.peer(0).process->err().find("still matches") != std::string::npos; }, 5s));
  CHECK(lists_as_seeding(c, 0, id));

  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  // Same size, other bytes: only the identity kept in peer.db can tell.
  overwrite(src, kChunkSize, std::string(4096, 'y'));
  c.start_peer(0);
  REQUIRE(c.wait_live(0));
  CHECK(wait_for([&] { return !lists_as_seeding(c, 0, id); }, 15s));
  // 0 holders, or not listed at all: the central server forgets a file
  // nobody holds at its next sweep.
  CHECK(wait_for([&] { return c.holders(id) <= 0; }, 15s));
}
