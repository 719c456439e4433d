#include "support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>

#include "support/temp_dir.hpp"

namespace p2pshare::test {
namespace {
std::atomic<int> g_counter{0};

std::mutex g_reports_mutex;
std::vector<std::string> g_reports;  // guarded by g_reports_mutex

// How each sanitizer starts a report (UBSan's follows "file:line:col: ").
constexpr std::array<std::string_view, 4> kReportMarks = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                                          "WARNING: ThreadSanitizer", ": runtime error: "};

void collect_sanitizer_report(const std::string& command, const std::string& err) {
  std::size_t first = std::string::npos;
  for (const auto mark : kReportMarks) first = std::min(first, err.find(mark));
  if (first == std::string::npos) return;
  // From the start of that line, enough to name the bug and where.
  const std::size_t line = err.rfind('\n', first);
  const std::size_t from = line == std::string::npos ? 0 : line + 1;
  std::string report = command + ":\n" + err.substr(from, 6000);
  const std::lock_guard<std::mutex> lock(g_reports_mutex);
  g_reports.push_back(std::move(report));
}
}  // namespace

std::vector<std::string> take_sanitizer_reports() {
  const std::lock_guard<std::mutex> lock(g_reports_mutex);
  return std::exchange(g_reports, {});
}

Process::Process(std::vector<std::string> args, const std::filesystem::path& log_dir) {
  for (const auto& a : args) command_ += (command_.empty() ? "" : " ") + a;
  const int n = g_counter++;
  out_path_ = log_dir / ("proc-" + std::to_string(::getpid()) + "-" + std::to_string(n) + ".out");
  err_path_ = log_dir / ("proc-" + std::to_string(::getpid()) + "-" + std::to_string(n) + ".err");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int out_fd = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out_fd < 0 || err_fd < 0) throw std::runtime_error("cannot create process log files");
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error("fork failed");
  if (pid_ == 0) {
    ::dup2(out_fd, STDOUT_FILENO);
    ::dup2(err_fd, STDERR_FILENO);
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out_fd);
  ::close(err_fd);
}

Process::~Process() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
  try {
    collect_sanitizer_report(command_, err());
  } catch (...) {
    // A log that cannot be read has no report to give.
  }
}

std::string Process::out() const {
  return read_file(out_path_);
}
std::string Process::err() const {
  return read_file(err_path_);
}

std::optional<std::string> Process::wait_for_line(const std::string& prefix, std::chrono::milliseconds timeout) {
  std::optional<std::string> found;
  wait_for(
      [&] {
        const std::string text = out();
        std::size_t pos = 0;
        while (pos < text.size()) {
          const std::size_t end = text.find('\n', pos);
          if (end == std::string::npos) break;  // only whole lines
          if (text.compare(pos, prefix.size(), prefix) == 0) {
            found = text.substr(pos + prefix.size(), end - pos - prefix.size());
            return true;
          }
          pos = end + 1;
        }
        return !running();
      },
      timeout);
  return found;
}

std::string Process::wait_listening(std::chrono::milliseconds timeout) {
  auto addr = wait_for_line("listening on ", timeout);
  if (!addr) throw std::runtime_error("server did not start: " + err());
  return *addr;
}

void Process::signal(int sig) {
  if (!reaped_) ::kill(pid_, sig);
}

bool Process::running() {
  if (reaped_) return false;
  const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
  if (r == pid_) reaped_ = true;
  return !reaped_;
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  if (!wait_for([&] { return !running(); }, timeout)) return std::nullopt;
  if (WIFEXITED(status_)) return WEXITSTATUS(status_);
  return -1;
}

RunResult run(const std::vector<std::string>& args, const std::filesystem::path& log_dir,
              std::chrono::milliseconds timeout) {
  Process p(args, log_dir);
  RunResult result;
  auto code = p.wait(timeout);
  if (!code) {
    p.signal(SIGKILL);
    p.wait();
  }
  result.exit_code = code.value_or(-1);
  result.out = p.out();
  result.err = p.err();
  return result;
}

}  // namespace p2pshare::test
