#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "support/process.hpp"

// Every command a test runs without --data-dir uses the default data dir,
// which holds known_centrals (the fingerprints of central servers met
// before): each test process gets its own, so a port reused by another
// test's central server (a new key) is not taken for a changed key.
int main(int argc, char* argv[]) {
  const char* base = std::getenv("TMPDIR");  // NOLINT(concurrency-mt-unsafe): before any thread
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/p2pshare-xdg-XXXXXX";
  const bool isolated = ::mkdtemp(pattern.data()) != nullptr;
  if (isolated) ::setenv("XDG_DATA_HOME", pattern.c_str(), 1);  // NOLINT(concurrency-mt-unsafe): as above
  // The runner's own config file (~/.config/p2pshare/config.toml) is never
  // read: the default config path points into the same empty dir.
  if (isolated) ::setenv("XDG_CONFIG_HOME", pattern.c_str(), 1);  // NOLINT(concurrency-mt-unsafe): as above
  int result = Catch::Session().run(argc, argv);
  // A child's sanitizer report fails this run even when no assertion saw
  // its effect (support/process.hpp).
  const auto reports = p2pshare::test::take_sanitizer_reports();
  for (const auto& report : reports) std::cerr << "sanitizer report from a child process: " << report << "\n";
  if (!reports.empty() && result == 0) result = 1;
  if (isolated) {
    std::error_code ignored;
    std::filesystem::remove_all(pattern, ignored);
  }
  return result;
}
