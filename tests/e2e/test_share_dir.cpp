// peer-server --share-dir (a watched folder) and request-file --stdout /
// --sequential (streaming). The folder: files there at start are shared; a
// file written slowly is announced only under the id of its final bytes; a
// deleted one is withdrawn; a renamed one keeps its id without a re-hash; a
// symlink out of the folder is skipped; a thousand files dropped at once are
// all shared; a restart hashes nothing that did not change. The stream: the
// bytes on stdout are the file's; a reader that stalls holds the download
// back (backpressure) and memory stays bounded; a reader that closes early
// ends the command cleanly.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <set>

#include "e2e.hpp"
#include "p2pshare/manifest.hpp"
#include "support/build_kind.hpp"

using namespace p2pshare::test;

namespace {

std::string id_of(const fs::path& file) {
  return p2pshare::to_hex(p2pshare::build_manifest(file, 1).file_id());
}

// Ids the central server lists under `name`.
std::set<std::string> listed_as(const Cluster& c, const std::string& name) {
  std::set<std::string> ids;
  for (const auto& f : c.list_files()) {
    if (f.value("name", "") == name) ids.insert(f.value("file_id", ""));
  }
  return ids;
}

nlohmann::json folder_status(Cluster& c, std::size_t i) {
  const auto j = c.status_json(i);
  if (!j.is_object() || !j.contains("folders") || j["folders"].empty()) return nullptr;
  return j["folders"][0];
}

// The shared entry of `id` on peer i, or null.
nlohmann::json shared_entry(Cluster& c, std::size_t i, const std::string& id) {
  const auto j = c.status_json(i);
  if (!j.is_object()) return nullptr;
  for (const auto& s : j.value("shared", nlohmann::json::array())) {
    if (s.value("file_id", "") == id) return s;
  }
  return nullptr;
}

// Bytes the process had the block layer read for it (O_DIRECT reads included).
std::uint64_t disk_read_bytes(int pid) {
  const std::string text = read_file("/proc/" + std::to_string(pid) + "/io");
  const auto at = text.find("\nread_bytes:");
  return at == std::string::npos ? 0 : std::stoull(text.substr(at + 12));
}

std::uint64_t rss_kib(int pid) {
  const std::string text = read_file("/proc/" + std::to_string(pid) + "/status");
  const auto at = text.find("VmRSS:");
  return at == std::string::npos ? 0 : std::stoull(text.substr(at + 6));
}

}  // namespace

TEST_CASE("share-dir: slow writes, deletes, renames and symlinks out", "[e2e]") {
  Cluster c;
  const fs::path dir = c.path("shared");
  fs::create_directories(dir / "sub");
  const fs::path at_start = dir / "at-start.bin";
  write_random_file(at_start, 3 * kChunkSize + 5, 301);
  const auto outside = c.make_file("outside.bin", 1000, 302);
  fs::create_symlink(outside, dir / "link-out.bin");
  c.add_peer(true, {"--share-dir", dir.string()});
  const std::string start_id = id_of(at_start);
  REQUIRE(c.wait_holders(start_id, 1));

  // Symlink leading outside: skipped, with one log line, never listed.
  REQUIRE(wait_for([&] {
    const auto f = folder_status(c, 0);
    return f.is_object() && f.value("skipped", 0) == 1;
  }));
  CHECK(c.peer(0).process->err().find("link-out.bin") != std::string::npos);
  CHECK(listed_as(c, "outside.bin").empty());
  CHECK(listed_as(c, "link-out.bin").empty());

  SECTION("a file written slowly is announced only under the id of its final bytes") {
    const fs::path slow = dir / "slow.bin";
    std::set<std::string> seen;
    {
      std::ofstream out(slow, std::ios::binary);
      for (int part = 0; part < 3; ++part) {
        const std::string bytes(static_cast<std::size_t>(kChunkSize / 2), static_cast<char>('a' + part));
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        out.flush();
        // The writer pauses longer than the quiet period, with the file open.
        wait_for(
            [&] {
              for (const auto& id : listed_as(c, "slow.bin")) seen.insert(id);
              return false;
            },
            1500ms);
      }
    }
    const std::string final_id = id_of(slow);
    REQUIRE(wait_for([&] {
      for (const auto& id : listed_as(c, "slow.bin")) seen.insert(id);
      return seen.count(final_id) == 1;
    }));
    CHECK(seen == std::set<std::string>{final_id});
  }
  SECTION("a deleted file is withdrawn") {
    fs::remove(at_start);
    CHECK(wait_for([&] { return c.holders(start_id) <= 0; }));
    CHECK_FALSE(shared_entry(c, 0, start_id).is_object());
  }
  SECTION("a renamed file keeps its id, without hashing it again") {
    const auto before = folder_status(c, 0);
    REQUIRE(before.is_object());
    const fs::path renamed = dir / "sub" / "renamed.bin";
    fs::rename(at_start, renamed);
    REQUIRE(wait_for([&] {
      const auto s = shared_entry(c, 0, start_id);
      return s.is_object() && s.value("path", "") == renamed.string();
    }));
    CHECK(folder_status(c, 0).value("hashed", 0) == before.value("hashed", 0));
    CHECK(c.holders(start_id) == 1);
    // Another peer still downloads it, from the new path.
    c.add_peer();
    const auto r = c.on_peer(1, "request-file", {"--file-id", start_id});
    REQUIRE(r.exit_code == 0);
    CHECK(files_equal(renamed, fs::path(r.out.substr(0, r.out.size() - 1))));
  }
}

TEST_CASE("share-dir: a thousand files dropped at once, and a restart hashes none again", "[e2e]") {
  Cluster c;
  const fs::path dir = c.path("drop");
  fs::create_directories(dir);
  c.add_peer(true, {"--share-dir", dir.string()});
  constexpr int kFiles = 1000;
  const auto dropped = std::chrono::steady_clock::now();
  for (int i = 0; i < kFiles; ++i) {
    write_random_file(dir / ("f" + std::to_string(i) + ".bin"), 1024 + static_cast<std::uint64_t>(i) * 7,
                      1000 + static_cast<std::uint64_t>(i));
  }
  auto settled = [&](int hashed) {
    const auto f = folder_status(c, 0);
    return f.is_object() && f.value("files", 0) == kFiles && f.value("pending", 1) == 0 &&
           (hashed < 0 || f.value("hashed", -1) == hashed);
  };
  REQUIRE(wait_for([&] { return settled(kFiles); }, 120s));
  WARN("1000 files shared " << elapsed_since(dropped) << " s after they were dropped in");
  const std::string some = id_of(dir / "f517.bin");
  CHECK(c.wait_holders(some, 1));

  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  c.start_peer_with(0, {"--share-dir", dir.string()});
  REQUIRE(wait_for([&] { return settled(-1); }, 60s));
  const auto f = folder_status(c, 0);
  CHECK(f.value("hashed", -1) == 0);
  CHECK(f.value("reused", 0) == kFiles);
  CHECK(c.wait_holders(some, 1));
}

TEST_CASE("request-file --stdout: the file's bytes, in order, with backpressure", "[e2e]") {
  Cluster c(2);
  const auto small = c.make_file("small.bin", 5 * kChunkSize + 11, 401);
  const std::string small_id = c.register_file(0, small);
  REQUIRE(c.wait_holders(small_id, 1));

  SECTION("byte-identical, from another peer and from the peer that has it") {
    const auto r = c.on_peer(1, "request-file", {"--file-id", small_id, "--stdout"});
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == read_file(small));
    const auto local = c.on_peer(0, "request-file", {"--file-id", small_id, "--stdout"});
    REQUIRE(local.exit_code == 0);
    CHECK(local.out == read_file(small));
  }
  SECTION("while the file downloads, each chunk comes from the download, not read back from the disk") {
    const std::uint64_t size = 256 * kChunkSize;  // 64 MiB
    const auto big = c.make_file("big.bin", size, 403);
    const std::string id = c.register_file(0, big);
    REQUIRE(c.wait_holders(id, 1));
    const int pid = c.peer(1).process->pid();
    const auto before = disk_read_bytes(pid);
    const auto out = c.path("streamed.bin");
    const std::string command = "'" + binary() + "' request-file --peer-addr " + c.peer(1).addr + " --data-dir '" +
                                c.peer(1).data_dir.string() + "' --file-id " + id + " --stdout > '" + out.string() +
                                "'";
    const auto r = run({"/bin/sh", "-c", command}, c.logs(), 120s);
    REQUIRE(r.exit_code == 0);
    CHECK(files_equal(big, out));
    // The partial file is written O_DIRECT: a chunk read back from it is
    // read from the disk, and the whole file would be.
    const auto read = disk_read_bytes(pid) - before;
    WARN("streaming peer-server read " << read / 1024 << " KiB from the disk for a " << size / 1024 << " KiB file");
    CHECK(read < size / 4);
  }
  SECTION("--sequential downloads to disk correctly") {
    const auto out = c.path("seq.bin");
    const auto r = c.on_peer(1, "request-file", {"--file-id", small_id, "--sequential", "--out", out.string()});
    REQUIRE(r.exit_code == 0);
    CHECK(files_equal(small, out));
  }
  SECTION("a reader that stalls holds the download back; memory stays bounded; then every byte comes") {
    const std::uint64_t size = 256 * kChunkSize;  // 64 MiB: four times the read-ahead window
    const auto big = c.make_file("big.bin", size, 402);
    const std::string id = c.register_file(0, big);
    REQUIRE(c.wait_holders(id, 1));
    const auto fifo = c.path("go");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const auto out = c.path("streamed.bin");
    // The reader waits for a line on the FIFO before it reads anything.
    const std::string command = "'" + binary() + "' request-file --peer-addr " + c.peer(1).addr + " --data-dir '" +
                                c.peer(1).data_dir.string() + "' --file-id " + id + " --stdout | { read go < '" +
                                fifo.string() + "'; cat > '" + out.string() + "'; }";
    Process reader({"/bin/sh", "-c", command}, c.logs());
    REQUIRE(wait_for([&] { return c.have_bytes(1, id) > 0; }, 30s));
    // Stalled: the download stops at the read-ahead window, far short of the file.
    CHECK_FALSE(wait_for([&] { return c.have_bytes(1, id) >= size; }, 3s));
    const auto held = c.have_bytes(1, id);
    CHECK(held < size / 2);
    const auto rss = rss_kib(c.peer(1).process->pid());
    CHECK(rss < 64 * 1024 * kMemoryBoundFactor);
    WARN("stalled reader: " << held / 1024 << " KiB of " << size / 1024 << " KiB fetched, peer-server RSS " << rss
                            << " KiB");
    {
      std::ofstream go(fifo);
      go << "go\n";
    }
    REQUIRE(reader.wait(120s) == 0);
    CHECK(files_equal(big, out));
    CHECK(c.peer(1).process->running());

    SECTION("a reader that closes early ends the command cleanly") {
      const std::string early = "set -o pipefail; '" + binary() + "' request-file --peer-addr " + c.peer(0).addr +
                                " --data-dir '" + c.peer(0).data_dir.string() + "' --file-id " + id +
                                " --stdout | head -c 1000 > /dev/null";
      const auto r = run({"/bin/bash", "-c", early}, c.logs(), 60s);
      CHECK(r.exit_code == 0);
      CHECK(r.err.empty());
    }
  }
}
