#include "servers.hpp"

#include <sys/resource.h>

#include <condition_variable>
#include <csignal>
#include <iostream>
#include <mutex>
#include <thread>

#include "p2pshare/log.hpp"

namespace p2pshare::cmd {
namespace {

// A server holds a descriptor per connection: allow as many as the hard
// limit lets us, so --max-connections, not the default 1024, is the cap.
void raise_descriptor_limit() {
  struct rlimit limit {};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int serve(asio::io_context& io, const cli::Address& bound, const std::function<void()>& stop,
          const std::string& fingerprint) {
  raise_descriptor_limit();
  std::signal(SIGPIPE, SIG_IGN);
  // Past a file-size limit (ulimit -f), a write fails with EFBIG and that one
  // download fails with a clear error; the default action would kill the server.
  std::signal(SIGXFSZ, SIG_IGN);
  asio::signal_set signals(io, SIGINT, SIGTERM);

  // After a signal, in-flight work gets a bounded time to drain; a server
  // that cannot finish by then leaves with status 1 rather than hang.
  std::mutex mutex;
  std::condition_variable drained;
  bool done = false;
  std::thread watchdog;

  signals.async_wait([&](const std::error_code& ec, int signal) {
    if (ec) return;
    log::info("signal {}: shutting down", signal);
    stop();
    watchdog = std::thread([&] {
      std::unique_lock lock(mutex);
      if (!drained.wait_for(lock, std::chrono::seconds(10), [&] { return done; })) {
        log::error("shutdown did not finish in 10 s; leaving anyway");
        std::_Exit(1);
      }
    });
  });
  std::cout << "listening on " << bound.to_string() << std::endl;
  if (!fingerprint.empty()) std::cout << "fingerprint " << fingerprint << std::endl;
  log::info("listening on {}", bound.to_string());
  io.run();
  {
    std::lock_guard lock(mutex);
    done = true;
  }
  drained.notify_all();
  if (watchdog.joinable()) watchdog.join();
  return 0;
}

}  // namespace p2pshare::cmd
