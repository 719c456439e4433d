#include "servers.hpp"

#include <csignal>
#include <iostream>

#include "p2pshare/log.hpp"

namespace p2pshare::cmd {

int serve(asio::io_context& io, const cli::Address& bound, const std::function<void()>& stop) {
  asio::signal_set signals(io, SIGINT, SIGTERM);
  std::signal(SIGPIPE, SIG_IGN);
  asio::steady_timer hard_stop(io);
  signals.async_wait([&](const std::error_code& ec, int signal) {
    if (ec) return;
    log::info("signal {}: shutting down", signal);
    stop();
    // In-flight work gets a few seconds to finish; then we leave regardless.
    hard_stop.expires_after(std::chrono::seconds(5));
    hard_stop.async_wait([&](const std::error_code& e) {
      if (!e) io.stop();
    });
  });
  std::cout << "listening on " << bound.to_string() << std::endl;
  log::info("listening on {}", bound.to_string());
  io.run();
  return 0;
}

}  // namespace p2pshare::cmd
