// Starts the real binary as a child process for end-to-end tests. stdout and
// stderr go to files so a test can wait for a line without a reader thread.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace p2pshare::test {

struct RunResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string out;
  std::string err;
};

class Process {
 public:
  // Starts `args` (args[0] is the program). Output goes under `log_dir`.
  Process(std::vector<std::string> args, const std::filesystem::path& log_dir);
  ~Process();  // SIGKILLs the child if it still runs
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  std::string out() const;
  std::string err() const;
  // Waits until stdout holds a line starting with `prefix`; returns the rest of it.
  std::optional<std::string> wait_for_line(const std::string& prefix,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // For a server: waits for "listening on HOST:PORT" and returns HOST:PORT.
  std::string wait_listening(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void signal(int sig);
  // Waits for exit; the exit code, or -1 on a signal, nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  bool running();

 private:
  std::string command_;  // args joined, to name the process in a report
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
  std::filesystem::path out_path_;
  std::filesystem::path err_path_;
};

// Takes the sanitizer reports (ASan, LSan, TSan, UBSan) found so far in the stderr
// of children that have ended: each Process looks when it is destroyed. A
// server's report does not always fail the test that started it (a TSan
// report with halt_on_error ends the server, and a test that only stops it
// at the end never asks why), so the test runner (support/main.cpp) fails the
// whole test process when this is not empty.
std::vector<std::string> take_sanitizer_reports();

// Runs to completion with a deadline (the child is killed past it).
RunResult run(const std::vector<std::string>& args, const std::filesystem::path& log_dir,
              std::chrono::milliseconds timeout = std::chrono::seconds(60));

}  // namespace p2pshare::test
