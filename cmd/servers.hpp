// Running a server until SIGINT/SIGTERM: print the "listening on" line, run
// the io_context, and on a signal stop the server and let the work drain.
#pragma once

#include <functional>

#include <asio.hpp>

#include "p2pshare/cli.hpp"

namespace p2pshare::cmd {

int serve(asio::io_context& io, const cli::Address& bound, const std::function<void()>& stop);

}  // namespace p2pshare::cmd
