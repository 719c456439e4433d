#include "support/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "support/temp_dir.hpp"

namespace p2pshare::test {
namespace {
std::atomic<int> g_counter{0};
}

Process::Process(std::vector<std::string> args, const std::filesystem::path& log_dir) {
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
