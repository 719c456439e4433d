// The chunk store: name sanitising, partial files, chunk readers.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "p2pshare/error.hpp"
#include "p2pshare/store.hpp"
#include "p2pshare/types.hpp"
#include "support/temp_dir.hpp"

namespace fs = std::filesystem;
using p2pshare::Errc;
using p2pshare::Error;
using p2pshare::FileId;
using p2pshare::store::ChunkReader;
using p2pshare::store::FileHandle;
using p2pshare::store::PartialFile;
using p2pshare::store::pread_exact;
using p2pshare::store::sanitize_name;
using p2pshare::test::read_file;
using p2pshare::test::TempDir;
using p2pshare::test::write_random_file;

namespace {

FileId make_id(std::uint8_t fill) {
  FileId id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(fill + i);
  return id;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  REQUIRE(out.good());
}

std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
  std::vector<std::uint8_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed + i * 7 + (i >> 8));
  return v;
}

std::string as_string(const p2pshare::store::ChunkBytes& v) {
  return {v.begin(), v.end()};
}

std::string as_string(const std::vector<std::uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

template <typename Fn>
Errc thrown_code(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.code();
  } catch (const std::exception& e) {
    FAIL("threw a non-p2pshare exception: " << e.what());
  }
  FAIL("did not throw");
  return Errc::bad_request;
}

bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

}  // namespace

// --- sanitize_name -----------------------------------------------------------

TEST_CASE("sanitize_name keeps only the last path component", "[store]") {
  CHECK(sanitize_name("../../etc/passwd", "fb") == "passwd");
  CHECK(sanitize_name("..\\..\\x", "fb") == "x");
  CHECK(sanitize_name("/abs/path", "fb") == "path");
  CHECK(sanitize_name("C:\\Users\\me\\notes.txt", "fb") == "notes.txt");
  CHECK(sanitize_name("dir/", "fb") == "fb");  // nothing after the last separator
}

TEST_CASE("sanitize_name falls back for empty, dot and dot-dot names", "[store]") {
  CHECK(sanitize_name("", "abc123") == "abc123");
  CHECK(sanitize_name(".", "abc123") == "abc123");
  CHECK(sanitize_name("..", "abc123") == "abc123");
  CHECK(sanitize_name("...", "abc123") == "abc123");
  CHECK(sanitize_name("a/..", "abc123") == "abc123");
  CHECK(sanitize_name(std::string_view("\0\x01\x1f", 3), "abc123") == "abc123");
}

TEST_CASE("sanitize_name drops NUL and control bytes", "[store]") {
  CHECK(sanitize_name(std::string_view("ab\0cd", 5), "fb") == "abcd");
  CHECK(sanitize_name("a\x01"
                      "b\nc\td\x7f"
                      "e\x1b[31m",
                      "fb") == "abcde[31m");
  const std::string out = sanitize_name(std::string_view("x\0y\r\n.txt", 9), "fb");
  CHECK(out == "xy.txt");
  for (char c : out) CHECK(static_cast<unsigned char>(c) >= 0x20);
}

TEST_CASE("sanitize_name strips leading dots", "[store]") {
  CHECK(sanitize_name(".hidden", "fb") == "hidden");
  CHECK(sanitize_name("..hidden.txt", "fb") == "hidden.txt");
  CHECK(sanitize_name("../.bashrc", "fb") == "bashrc");
}

TEST_CASE("sanitize_name cuts long names on a UTF-8 boundary", "[store]") {
  std::string e_acute;
  for (int i = 0; i < 500; ++i) e_acute += "\xc3\xa9";  // "é", 2 bytes: 1000 bytes
  REQUIRE(e_acute.size() == 1000);
  const std::string cut = sanitize_name(e_acute, "fb");
  CHECK(cut.size() <= 255);
  CHECK(cut.size() == 254);  // 127 whole characters: 255 would split one
  CHECK(valid_utf8(cut));
  CHECK(cut == e_acute.substr(0, 254));

  std::string emoji;
  for (int i = 0; i < 250; ++i) emoji += "\xf0\x9f\x98\x80";  // U+1F600, 4 bytes
  const std::string cut4 = sanitize_name(emoji, "fb");
  CHECK(cut4.size() == 252);
  CHECK(valid_utf8(cut4));

  const std::string ascii(1000, 'a');
  CHECK(sanitize_name(ascii, "fb") == std::string(255, 'a'));
}

TEST_CASE("sanitize_name leaves ordinary names alone", "[store]") {
  CHECK(sanitize_name("report 2026.pdf", "fb") == "report 2026.pdf");
  CHECK(sanitize_name("r\xc3\xa9sum\xc3\xa9.txt", "fb") == "r\xc3\xa9sum\xc3\xa9.txt");
  CHECK(sanitize_name("archive.tar.gz", "fb") == "archive.tar.gz");
}

TEST_CASE("sanitize_name strips bidi controls, C1 controls and line separators", "[store]") {
  // U+202E (right-to-left override) would show "x\u202etxt.exe" as "xexe.txt".
  CHECK(sanitize_name("x\u202etxt.exe", "fb") == "xtxt.exe");
  for (const char* bidi : {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
                           "\u200e", "\u200f", "\u061c", "\u2028", "\u2029", "\u0085", "\u009b"}) {
    INFO("code point bytes: " << bidi);
    CHECK(sanitize_name(std::string("a") + bidi + "b.txt", "fb") == "ab.txt");
    CHECK(sanitize_name(bidi, "fb") == "fb");
  }
  // Neighbours of those ranges are ordinary characters and stay.
  CHECK(sanitize_name("\u2029x\u202f\u2065\u206a\u00a0", "fb") == "x\u202f\u2065\u206a\u00a0");
  CHECK(sanitize_name("\u0627\u0644\u0639\u0631\u0628\u064a\u0629.txt", "fb") ==
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629.txt");  // right-to-left text itself is fine
}

TEST_CASE("sanitize_name drops bytes that are not UTF-8, and never joins what is left into a control", "[store]") {
  CHECK(sanitize_name("caf\xe9.txt", "fb") == "caf.txt");
  CHECK(sanitize_name("\xc0\xaf"
                      "etc",
                      "fb") == "etc");  // an overlong "/"
  // Dropping the stray C2 must not leave E2 80 AE (U+202E) behind.
  const std::string out = sanitize_name("a\xe2\xc2\x80\xae.exe", "fb");
  CHECK(out.find("\xe2\x80\xae") == std::string::npos);
  CHECK(valid_utf8(out));
}

TEST_CASE("display_name shows hidden and control characters as U+FFFD", "[store]") {
  using p2pshare::store::display_name;
  CHECK(display_name("x\u202etxt.exe") == "x\ufffdtxt.exe");
  CHECK(display_name("a\x1b[31mred") == "a\ufffd[31mred");
  CHECK(display_name("two\nlines\u2028") == "two\ufffdlines\ufffd");
  CHECK(display_name("\u009b2J") == "\ufffd2J");
  CHECK(display_name("caf\xe9") == "caf\ufffd");
  CHECK(display_name("r\xc3\xa9sum\xc3\xa9 \u0627.txt") == "r\xc3\xa9sum\xc3\xa9 \u0627.txt");
  CHECK(display_name("") == "");
}

// --- PartialFile -------------------------------------------------------------

TEST_CASE("PartialFile is created pre-sized under its hidden name", "[store]") {
  TempDir dir;
  const FileId id = make_id(0xa0);
  PartialFile part(dir.path(), id, 123457);
  CHECK(part.created());
  CHECK(part.path() == dir.path() / (".p2pshare-" + p2pshare::to_hex(id) + ".part"));
  CHECK(part.path() == PartialFile::path_for(dir.path(), id));
  CHECK(fs::is_regular_file(part.path()));
  CHECK(fs::file_size(part.path()) == 123457);
  CHECK(part.stamp().size == 123457);

  const auto data = pattern(1000, 3);
  part.write(122457, data);  // the last 1000 bytes
  std::vector<std::uint8_t> back(1000);
  part.read(122457, back);
  CHECK(back == data);
  std::vector<std::uint8_t> zeros(100);
  part.read(0, zeros);
  CHECK(zeros == std::vector<std::uint8_t>(100, 0));
  CHECK(fs::file_size(part.path()) == 123457);  // writing did not grow it
}

TEST_CASE("PartialFile reads and writes past 4 GiB in a sparse file", "[store]") {
  TempDir dir;
  const std::uint64_t size = 5ull << 30;
  PartialFile part(dir.path(), make_id(1), size);
  REQUIRE(part.created());
  CHECK(fs::file_size(part.path()) == size);

  const std::uint64_t offset = (9ull << 30) / 2;  // 4.5 GiB
  const auto data = pattern(256 * 1024, 9);
  part.write(offset, data);
  std::vector<std::uint8_t> back(data.size());
  part.read(offset, back);
  CHECK(back == data);

  // A chunk straddling the 4 GiB line.
  const auto across = pattern(4096, 77);
  part.write((4ull << 30) - 2048, across);
  std::vector<std::uint8_t> back2(across.size());
  part.read((4ull << 30) - 2048, back2);
  CHECK(back2 == across);

  // The last byte of the file is readable; one past it is not.
  std::vector<std::uint8_t> last(1);
  part.read(size - 1, last);
  CHECK(last[0] == 0);
  std::vector<std::uint8_t> two(2);
  CHECK(thrown_code([&] { part.read(size - 1, two); }) == Errc::io);

  struct stat st {};
  REQUIRE(::stat(part.path().c_str(), &st) == 0);
  CHECK(static_cast<std::uint64_t>(st.st_size) == size);
  // Really sparse: well under 16 MiB allocated for a 5 GiB file.
  CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < (16ull << 20));
}

TEST_CASE("PartialFile writes aligned chunks past the page cache, and the rest buffered, coherently", "[store]") {
  TempDir dir;
  // Whether this file system takes O_DIRECT at all (tmpfs does not): the
  // fallback is then the whole story, and is checked below too.
  const auto probe_path = dir / "probe";
  write_text(probe_path, "");
  const FileHandle probe(::open(probe_path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  const bool direct_here = static_cast<bool>(probe);

  constexpr std::size_t kChunk = 256 * 1024;
  const std::uint64_t size = 3 * kChunk + 1000;  // the last chunk's length is not a multiple of a page
  PartialFile part(dir.path(), make_id(7), size);
  CHECK(part.writes_direct() == direct_here);

  const auto first = pattern(kChunk, 3);
  p2pshare::store::ChunkBytes aligned(first.begin(), first.end());
  REQUIRE(reinterpret_cast<std::uintptr_t>(aligned.data()) % p2pshare::store::kDirectAlignment == 0);
  part.write(kChunk, aligned);
  const auto tail = pattern(kChunk + 1000, 5);
  part.write(2 * kChunk, tail);
  CHECK(part.writes_direct() == direct_here);  // the tail went buffered, not into a failed direct write

  if (direct_here) {
    // The aligned chunk went straight to the disk: none of its pages is in
    // the page cache (a buffered write would leave all of them there).
    void* map = ::mmap(nullptr, kChunk, PROT_READ, MAP_SHARED, part.fd(), static_cast<off_t>(kChunk));
    REQUIRE(map != MAP_FAILED);
    std::vector<unsigned char> resident(kChunk / 4096);
    REQUIRE(::mincore(map, kChunk, resident.data()) == 0);
    ::munmap(map, kChunk);
    CHECK(std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return (r & 1) != 0; }) == 0);
  }

  // Cached first, then overwritten directly: a read sees the new bytes.
  std::vector<std::uint8_t> back(kChunk);
  part.read(kChunk, back);
  CHECK(back == first);
  const auto second = pattern(kChunk, 11);
  p2pshare::store::ChunkBytes again(second.begin(), second.end());
  part.write(kChunk, again);
  part.read(kChunk, back);
  CHECK(back == second);
  std::vector<std::uint8_t> tail_back(tail.size());
  part.read(2 * kChunk, tail_back);
  CHECK(tail_back == tail);

  // After finish, the file holds every byte written, by either path.
  const auto done = part.finish(dir / "done.bin", false);
  const std::string on_disk = read_file(done);
  REQUIRE(on_disk.size() == size);
  CHECK(on_disk.substr(kChunk, kChunk) == as_string(second));
  CHECK(on_disk.substr(2 * kChunk) == as_string(tail));
  CHECK(on_disk.substr(0, kChunk) == std::string(kChunk, '\0'));
}

TEST_CASE("PartialFile reopens an existing partial file and keeps its data", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x10);
  const auto data = pattern(4096, 42);
  {
    PartialFile part(dir.path(), id, 1 << 20);
    CHECK(part.created());
    part.write(65536, data);
    part.sync();
  }
  PartialFile again(dir.path(), id, 1 << 20);
  CHECK_FALSE(again.created());
  CHECK(fs::file_size(again.path()) == (1u << 20));
  std::vector<std::uint8_t> back(data.size());
  again.read(65536, back);
  CHECK(back == data);
}

TEST_CASE("PartialFile resets a partial file of the wrong size", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x20);
  const auto data = pattern(4096, 5);
  {
    PartialFile part(dir.path(), id, 100000);
    part.write(0, data);
  }
  PartialFile bigger(dir.path(), id, 200000);
  CHECK(bigger.created());
  CHECK(fs::file_size(bigger.path()) == 200000);
  std::vector<std::uint8_t> back(data.size());
  bigger.read(0, back);
  CHECK(back == std::vector<std::uint8_t>(data.size(), 0));  // old bytes are gone

  // Smaller than recorded is reset too.
  bigger.write(0, data);
  PartialFile smaller(dir.path(), id, 5000);
  CHECK(smaller.created());
  CHECK(fs::file_size(smaller.path()) == 5000);
  smaller.read(0, back);
  CHECK(back == std::vector<std::uint8_t>(data.size(), 0));
}

TEST_CASE("PartialFile::finish without replace never overwrites", "[store]") {
  TempDir dir;
  const fs::path dest = dir / "report.pdf";
  write_text(dest, "old");

  PartialFile first(dir.path(), make_id(1), 5);
  first.write(0, std::vector<std::uint8_t>{'f', 'i', 'r', 's', 't'});
  const fs::path partial_path = first.path();
  const fs::path got1 = first.finish(dest, false);
  CHECK(got1 == dir / "report (1).pdf");
  CHECK_FALSE(fs::exists(first.path()));  // moved away; path() still names the partial file
  CHECK(read_file(got1) == "first");
  CHECK(read_file(dest) == "old");
  CHECK_FALSE(fs::exists(partial_path));

  PartialFile second(dir.path(), make_id(2), 6);
  second.write(0, std::vector<std::uint8_t>{'s', 'e', 'c', 'o', 'n', 'd'});
  const fs::path got2 = second.finish(dest, false);
  CHECK(got2 == dir / "report (2).pdf");
  CHECK(read_file(got2) == "second");
  CHECK(read_file(got1) == "first");
  CHECK(read_file(dest) == "old");

  // A free destination is used as is.
  PartialFile third(dir.path(), make_id(3), 5);
  third.write(0, std::vector<std::uint8_t>{'t', 'h', 'i', 'r', 'd'});
  CHECK(third.finish(dir / "fresh.bin", false) == dir / "fresh.bin");
  CHECK(read_file(dir / "fresh.bin") == "third");
}

TEST_CASE("PartialFile::finish with replace replaces the destination", "[store]") {
  TempDir dir;
  const fs::path dest = dir / "data.bin";
  write_text(dest, "old contents");
  PartialFile part(dir.path(), make_id(7), 3);
  part.write(0, std::vector<std::uint8_t>{'n', 'e', 'w'});
  const fs::path partial_path = part.path();
  CHECK(part.finish(dest, true) == dest);
  CHECK(read_file(dest) == "new");
  CHECK_FALSE(fs::exists(partial_path));
  CHECK_FALSE(fs::exists(dir / "data (1).bin"));
}

TEST_CASE("PartialFile::finish replaces a symlink, never writes through it", "[store]") {
  TempDir dir;
  const fs::path target = dir / "target.bin";
  write_text(target, "precious");
  const fs::path link = dir / "link.bin";
  fs::create_symlink(target, link);

  SECTION("replace") {
    PartialFile part(dir.path(), make_id(8), 3);
    part.write(0, std::vector<std::uint8_t>{'n', 'e', 'w'});
    CHECK(part.finish(link, true) == link);
    CHECK_FALSE(fs::is_symlink(link));
    CHECK(fs::is_regular_file(fs::symlink_status(link)));
    CHECK(read_file(link) == "new");
    CHECK(read_file(target) == "precious");
  }
  SECTION("no replace") {
    PartialFile part(dir.path(), make_id(9), 3);
    part.write(0, std::vector<std::uint8_t>{'n', 'e', 'w'});
    CHECK(part.finish(link, false) == dir / "link (1).bin");
    CHECK(fs::is_symlink(link));
    CHECK(read_file(target) == "precious");
    CHECK(read_file(dir / "link (1).bin") == "new");
  }
}

TEST_CASE("PartialFile never follows a symlink at its own path", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x33);
  const fs::path elsewhere = dir / "elsewhere.txt";
  write_text(elsewhere, "do not touch");
  fs::create_symlink(elsewhere, PartialFile::path_for(dir.path(), id));

  // Neither a size that would truncate it nor its exact size opens it.
  CHECK_THROWS_AS(PartialFile(dir.path(), id, 1 << 20), Error);
  CHECK_THROWS_AS(PartialFile(dir.path(), id, 12), Error);
  CHECK(read_file(elsewhere) == "do not touch");
  CHECK(fs::file_size(elsewhere) == 12);
  CHECK(fs::is_symlink(PartialFile::path_for(dir.path(), id)));

  // A dangling link does not get its target created either.
  const FileId id2 = make_id(0x44);
  const fs::path missing = dir / "missing.txt";
  fs::create_symlink(missing, PartialFile::path_for(dir.path(), id2));
  CHECK_THROWS_AS(PartialFile(dir.path(), id2, 100), Error);
  CHECK_FALSE(fs::exists(missing));
}

TEST_CASE("PartialFile::remove deletes the partial file", "[store]") {
  TempDir dir;
  PartialFile part(dir.path(), make_id(0x55), 10);
  REQUIRE(fs::exists(part.path()));
  part.remove();
  CHECK_FALSE(fs::exists(part.path()));
}

// --- PartialFile: one owner per partial file ----------------------------------

namespace {

// What another process holding `path` looks like to us: a separate open()
// with an exclusive flock (flock conflicts between open()s even in one process).
FileHandle lock_like_another_process(const fs::path& path) {
  FileHandle fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  REQUIRE(fd);
  REQUIRE(::flock(fd.get(), LOCK_EX | LOCK_NB) == 0);
  return fd;
}

bool locked_by_someone(const fs::path& path) {
  FileHandle fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) == 0) return false;
  REQUIRE(errno == EWOULDBLOCK);
  return true;
}

}  // namespace

TEST_CASE("PartialFile holds a lock on its file for its whole life", "[store]") {
  TempDir dir;
  fs::path path;
  {
    PartialFile part(dir.path(), make_id(0x60), 70000);
    path = part.path();
    CHECK(locked_by_someone(path));
  }
  CHECK(fs::exists(path));  // a leftover, for a later download to adopt
  CHECK_FALSE(locked_by_someone(path));
}

TEST_CASE("A partial file another process holds is never touched: the next name is used", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x61);
  const fs::path theirs = PartialFile::path_for(dir.path(), id);
  // Theirs has another size: adopting it would have cut it.
  write_text(theirs, "their bytes, 27 bytes long");
  const auto holder = lock_like_another_process(theirs);

  PartialFile mine(dir.path(), id, 5000);
  CHECK(mine.path() == PartialFile::path_for(dir.path(), id, 1));
  CHECK(mine.path().filename().string() == ".p2pshare-" + p2pshare::to_hex(id) + ".1.part");
  CHECK(mine.created());
  CHECK_FALSE(mine.alone());
  CHECK(fs::file_size(mine.path()) == 5000);
  mine.write(0, pattern(5000, 1));
  CHECK(read_file(theirs) == "their bytes, 27 bytes long");

  SECTION("finishing mine moves only mine") {
    CHECK(mine.finish(dir / "done.bin", true) == dir / "done.bin");
    CHECK(read_file(dir / "done.bin") == as_string(pattern(5000, 1)));
    CHECK(read_file(theirs) == "their bytes, 27 bytes long");
  }
  SECTION("removing mine removes only mine") {
    mine.remove();
    CHECK_FALSE(fs::exists(mine.path()));
    CHECK(read_file(theirs) == "their bytes, 27 bytes long");
  }
}

TEST_CASE("A partial file whose holder died is adopted, under whichever name it has", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x62);
  const fs::path first = PartialFile::path_for(dir.path(), id);
  const fs::path second = PartialFile::path_for(dir.path(), id, 1);
  const auto data = pattern(4096, 9);
  {
    // Two downloads at once, then both processes gone.
    const auto other = lock_like_another_process(first);
    PartialFile part(dir.path(), id, 8192);
    REQUIRE(part.path() == second);
    part.write(4096, data);
    part.sync();
  }
  fs::remove(first);  // the other download finished and moved its file away

  PartialFile again(dir.path(), id, 8192);
  CHECK(again.path() == second);  // not a fresh file under the first name
  CHECK_FALSE(again.created());
  CHECK(again.alone());
  std::vector<std::uint8_t> back(data.size());
  again.read(4096, back);
  CHECK(back == data);
  CHECK_FALSE(fs::exists(first));
}

TEST_CASE("A PartialFile left behind never removes or moves the next download's file", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x63);
  PartialFile old_one(dir.path(), id, 100);
  old_one.write(0, pattern(100, 2));
  const fs::path done = old_one.finish(dir / "done.bin", true);
  // The name is free again: a new download of the same file takes it.
  PartialFile next(dir.path(), id, 100);
  REQUIRE(next.path() == old_one.path());
  CHECK(next.created());
  old_one.remove();
  CHECK(fs::exists(next.path()));
  CHECK_THROWS_AS(old_one.finish(dir / "again.bin", true), Error);
  CHECK(fs::exists(next.path()));
  CHECK_FALSE(fs::exists(dir / "again.bin"));
  CHECK(read_file(done) == as_string(pattern(100, 2)));
}

TEST_CASE("A second PartialFile of a file this process holds shares it", "[store]") {
  // A download retried while a disk job of its first attempt still holds the
  // old object must find its own data, not start a new file.
  TempDir dir;
  const FileId id = make_id(0x64);
  const auto data = pattern(4096, 3);
  auto first = std::make_unique<PartialFile>(dir.path(), id, 65536);
  first->write(8192, data);
  PartialFile second(dir.path(), id, 65536);
  CHECK(second.path() == first->path());
  CHECK_FALSE(second.created());
  std::vector<std::uint8_t> back(data.size());
  second.read(8192, back);
  CHECK(back == data);
  first.reset();
  CHECK(locked_by_someone(second.path()));  // still held: second still uses it
}

TEST_CASE("PartialFile gives up when every name of the file is held by someone else", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x65);
  std::vector<FileHandle> holders;
  for (unsigned n = 0; n < p2pshare::store::kMaxPartialsPerFile; ++n) {
    holders.push_back(lock_like_another_process(PartialFile::path_for(dir.path(), id, n)));
  }
  CHECK(thrown_code([&] { PartialFile(dir.path(), id, 10); }) == Errc::io);
  for (unsigned n = 0; n < p2pshare::store::kMaxPartialsPerFile; ++n) {
    CHECK(fs::file_size(PartialFile::path_for(dir.path(), id, n)) == 0);  // none was resized
  }
}

TEST_CASE("Two processes downloading the same file into one folder get two partial files", "[store]") {
  TempDir dir;
  const FileId id = make_id(0x66);
  constexpr std::uint64_t kSize = 3 * 4096;
  int ready[2];
  int go[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(go) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The other peer-server: opens its partial file, writes, and keeps it
    // until told to exit. Nothing here may return into the test framework.
    int status = 1;
    try {
      PartialFile theirs(dir.path(), id, kSize);
      theirs.write(0, pattern(kSize, 0x5a));
      status = theirs.created() ? 0 : 2;
      char byte = 'r';
      if (::write(ready[1], &byte, 1) != 1) status = 3;
      if (::read(go[0], &byte, 1) != 1) status = 4;
    } catch (...) {
      status = 5;
    }
    ::_exit(status);
  }
  ::close(ready[1]);
  ::close(go[0]);
  char byte = 0;
  REQUIRE(::read(ready[0], &byte, 1) == 1);  // the child holds its file now

  {
    PartialFile mine(dir.path(), id, kSize);
    CHECK(mine.path() == PartialFile::path_for(dir.path(), id, 1));
    CHECK(mine.created());
    mine.write(0, pattern(kSize, 0x11));
    CHECK(read_file(PartialFile::path_for(dir.path(), id)) == as_string(pattern(kSize, 0x5a)));
    CHECK(mine.finish(dir / "mine.bin", true) == dir / "mine.bin");
  }
  REQUIRE(::write(go[1], &byte, 1) == 1);
  int status = -1;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  ::close(ready[0]);
  ::close(go[1]);

  // The child is gone: its file is a leftover, adopted with its bytes.
  PartialFile adopted(dir.path(), id, kSize);
  CHECK(adopted.path() == PartialFile::path_for(dir.path(), id));
  CHECK_FALSE(adopted.created());
  std::vector<std::uint8_t> back(kSize);
  adopted.read(0, back);
  CHECK(back == pattern(kSize, 0x5a));
  CHECK(read_file(dir / "mine.bin") == as_string(pattern(kSize, 0x11)));
}

// --- ChunkReader and pread_exact ----------------------------------------------

TEST_CASE("ChunkReader reads the right bytes", "[store]") {
  TempDir dir;
  const fs::path file = dir / "shared.bin";
  write_random_file(file, 300000, 7);
  const std::string whole = read_file(file);
  REQUIRE(whole.size() == 300000);

  ChunkReader reader(file, 300000);
  CHECK(reader.path() == file);
  for (std::uint64_t offset : {0ull, 1ull, 65536ull, 299000ull}) {
    std::vector<std::uint8_t> out(1000);
    reader.read(offset, out);
    CHECK(as_string(out) == whole.substr(offset, 1000));
  }
  std::vector<std::uint8_t> all(300000);
  reader.read(0, all);
  CHECK(as_string(all) == whole);
}

TEST_CASE("ChunkReader::read_cached serves from the page cache alone, with the same checks", "[store]") {
  TempDir dir;
  const fs::path file = dir / "shared.bin";
  write_random_file(file, 300000, 9);
  const std::string whole = read_file(file);  // now in the page cache
  ChunkReader reader(file, 300000);
  std::vector<std::uint8_t> out(65536);
  REQUIRE(reader.read_cached(65536, out));
  CHECK(as_string(out) == whole.substr(65536, 65536));

  // Dropped from the cache (clean pages after fsync): it would have to wait
  // for the disk, so it declines, and read() still serves the bytes.
  {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::fsync(fd) == 0);
    REQUIRE(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
    ::close(fd);
  }
  CHECK_FALSE(reader.read_cached(131072, out));
  reader.read(131072, out);
  CHECK(as_string(out) == whole.substr(131072, 65536));

  // A file changed since it was stamped is refused here too, cached or not.
  std::error_code ec;
  fs::last_write_time(file, fs::last_write_time(file) - std::chrono::seconds(5), ec);
  REQUIRE_FALSE(ec);
  CHECK(thrown_code([&] { (void)reader.read_cached(0, out); }) == Errc::io);
}

TEST_CASE("ChunkReader refuses a file whose size changed since registration", "[store]") {
  TempDir dir;
  const fs::path file = dir / "shared.bin";
  write_random_file(file, 5000, 1);
  CHECK(thrown_code([&] { ChunkReader(file, 5001); }) == Errc::io);
  CHECK(thrown_code([&] { ChunkReader(file, 4999); }) == Errc::io);
  CHECK(thrown_code([&] { ChunkReader(dir / "gone.bin", 10); }) == Errc::not_found);

  // Shrunk after opening: no read is served any more, not even of the bytes
  // that are still there (the file is no longer the one that was hashed).
  ChunkReader reader(file, 5000);
  fs::resize_file(file, 2500);
  std::vector<std::uint8_t> out(1000);
  CHECK(thrown_code([&] { reader.read(0, out); }) == Errc::io);
  CHECK(thrown_code([&] { reader.read(4000, out); }) == Errc::io);
}

TEST_CASE("ChunkReader refuses a file deleted, written or replaced since it was stamped", "[store]") {
  TempDir dir;
  const fs::path file = dir / "shared.bin";
  std::vector<std::uint8_t> out(1000);
  auto stamped = [&] {
    write_random_file(file, 5000, 2);
    const auto identity = p2pshare::store::identity_of(file);
    REQUIRE(identity);
    return *identity;
  };

  // Written in place, same size: the mtime/ctime moved.
  auto identity = stamped();
  {
    ChunkReader reader(file, 5000, identity);
    reader.read(0, out);
    // Set mtime apart explicitly: two writes in one clock tick share a stamp.
    std::error_code ec;
    fs::last_write_time(file, fs::last_write_time(file) - std::chrono::seconds(5), ec);
    REQUIRE_FALSE(ec);
    CHECK(thrown_code([&] { reader.read(0, out); }) == Errc::io);
  }
  // Opened after the change: refused at once.
  CHECK(thrown_code([&] { ChunkReader(file, 5000, identity); }) == Errc::io);

  // Deleted: the open file still has the bytes, but nobody shares it any more.
  identity = stamped();
  {
    ChunkReader reader(file, 5000, identity);
    fs::remove(file);
    CHECK(thrown_code([&] { reader.read(0, out); }) == Errc::io);
  }

  // Replaced by rename: the path names another file now.
  identity = stamped();
  {
    ChunkReader reader(file, 5000, identity);
    write_random_file(dir / "other.bin", 5000, 2);
    fs::rename(dir / "other.bin", file);
    CHECK(thrown_code([&] { reader.read(0, out); }) == Errc::io);
  }

  // Untouched: served.
  identity = stamped();
  ChunkReader reader(file, 5000, identity);
  reader.read(4000, out);
}

TEST_CASE("pread_exact on a short file throws", "[store]") {
  TempDir dir;
  const fs::path file = dir / "short.bin";
  write_text(file, "0123456789");
  FileHandle fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd);

  std::vector<std::uint8_t> out(10);
  pread_exact(fd.get(), out, 0, "short.bin");
  CHECK(as_string(out) == "0123456789");

  std::vector<std::uint8_t> more(20);
  try {
    pread_exact(fd.get(), more, 0, "short.bin");
    FAIL("did not throw");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::io);
    CHECK(std::string(e.what()).find("short.bin") != std::string::npos);
  }
  std::vector<std::uint8_t> one(1);
  CHECK(thrown_code([&] { pread_exact(fd.get(), one, 10, "short.bin"); }) == Errc::io);
  CHECK(thrown_code([&] { pread_exact(-1, one, 0, "bad fd"); }) == Errc::io);
}

TEST_CASE("ChunkWriter gathers neighbours handed in during a write into one run", "[store]") {
  TempDir dir;
  constexpr std::size_t kChunk = 64 * 1024;
  constexpr std::size_t kChunks = 12;
  const std::uint64_t size = kChunks * kChunk - 500;  // a short last chunk: the run ends buffered
  auto part = std::make_shared<PartialFile>(dir.path(), make_id(21), size);
  auto writer = std::make_shared<p2pshare::store::ChunkWriter>(part);

  std::vector<std::shared_ptr<const p2pshare::store::ChunkBytes>> chunks;
  for (std::size_t i = 0; i < kChunks; ++i) {
    const auto bytes = pattern(i + 1 == kChunks ? kChunk - 500 : kChunk, static_cast<std::uint8_t>(i + 1));
    chunks.push_back(std::make_shared<const p2pshare::store::ChunkBytes>(bytes.begin(), bytes.end()));
  }
  std::vector<int> written(kChunks, 0);
  // Chunk 0 is written alone; while its write is under way (its `done`
  // runs inside the writer's loop) chunks 11..1 arrive out of order, and
  // leave as one run.
  writer->submit(0, chunks[0], [&](std::optional<p2pshare::Failure> error) {
    CHECK(!error);
    ++written[0];
    for (std::size_t i = kChunks - 1; i >= 1; --i) {
      writer->submit(i * kChunk, chunks[i], [&written, i](std::optional<p2pshare::Failure> e) {
        CHECK(!e);
        ++written[i];
      });
    }
  });
  CHECK(std::all_of(written.begin(), written.end(), [](int n) { return n == 1; }));
  CHECK(writer->runs_written() == 2);

  const std::string on_disk = read_file(part->finish(dir / "gathered.bin", false));
  REQUIRE(on_disk.size() == size);
  for (std::size_t i = 0; i < kChunks; ++i)
    CHECK(on_disk.substr(i * kChunk, chunks[i]->size()) == as_string(*chunks[i]));
}

TEST_CASE("ChunkWriter splits runs at gaps and at the run limit", "[store]") {
  TempDir dir;
  constexpr std::size_t kChunk = 1024 * 1024;
  constexpr std::size_t kChunks = 10;
  auto part = std::make_shared<PartialFile>(dir.path(), make_id(22), kChunks * kChunk);
  auto writer = std::make_shared<p2pshare::store::ChunkWriter>(part);
  std::vector<std::shared_ptr<const p2pshare::store::ChunkBytes>> chunks;
  for (std::size_t i = 0; i < kChunks; ++i) {
    const auto bytes = pattern(kChunk, static_cast<std::uint8_t>(i + 40));
    chunks.push_back(std::make_shared<const p2pshare::store::ChunkBytes>(bytes.begin(), bytes.end()));
  }
  int done = 0;
  // While chunk 9 is written: 0..5 (6 MiB: one run of 4 and one of 2 at the
  // 4 MiB limit) and 7 (after the gap at 6: a run of its own).
  writer->submit(9 * kChunk, chunks[9], [&](const std::optional<p2pshare::Failure>&) {
    ++done;
    for (std::size_t i : {0U, 1U, 2U, 3U, 4U, 5U, 7U}) {
      writer->submit(i * kChunk, chunks[i], [&done](std::optional<p2pshare::Failure> e) {
        CHECK(!e);
        ++done;
      });
    }
  });
  CHECK(done == 8);
  CHECK(writer->runs_written() == 4);
  std::vector<std::uint8_t> back(kChunk);
  for (std::size_t i : {0U, 1U, 2U, 3U, 4U, 5U, 7U, 9U}) {
    part->read(i * kChunk, back);
    CHECK(as_string(back) == as_string(*chunks[i]));
  }
}
