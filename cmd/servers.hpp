// Running a server until SIGINT/SIGTERM: print the "listening on" line, run
// the io_context, and on a signal stop the server and let the work drain.
#pragma once

#include <functional>
#include <string>

#include <asio.hpp>

#include "p2pshare/cli.hpp"

namespace p2pshare::cmd {

// Prints "listening on HOST:PORT" (and "fingerprint FP" right after, when
// given), then runs `io` until a signal has `stop` drain it.
int serve(asio::io_context& io, const cli::Address& bound, const std::function<void()>& stop,
          const std::string& fingerprint = {});

}  // namespace p2pshare::cmd
