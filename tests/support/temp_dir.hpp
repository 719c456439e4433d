// Test sandbox helpers: a temp dir removed at scope end, file makers, and
// wait_for(predicate, timeout) so async tests wait on conditions, not sleeps.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace p2pshare::test {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// Writes `size` pseudo-random bytes (deterministic for a seed).
void write_random_file(const std::filesystem::path& path, std::uint64_t size, std::uint64_t seed = 1);
std::string read_file(const std::filesystem::path& path);
bool files_equal(const std::filesystem::path& a, const std::filesystem::path& b);

// Polls `done` every few milliseconds until it returns true or `timeout` passes.
bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace p2pshare::test
