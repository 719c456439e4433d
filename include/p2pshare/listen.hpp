// The listening side both servers share: resolve, bind, listen, and an accept
// loop that hands each new socket over.
//
// Threading: call from the io_context's thread (the one that runs the
// acceptor's handlers).
#pragma once

#include <functional>

#include <asio.hpp>

#include "p2pshare/cli.hpp"

namespace p2pshare {

// Resolves `address`, then opens, binds (SO_REUSEADDR, so a restart does not
// wait out TIME_WAIT) and listens on `acceptor`. Returns the address actually
// bound (port 0 becomes the port the kernel picked). Throws
// Error(Errc::unavailable) naming the address if it cannot.
cli::Address listen_on(asio::ip::tcp::acceptor& acceptor, const cli::Address& address);

// Accepts connections one after another until `stopped()` answers true or the
// acceptor is closed; `accepted` gets each new socket. The handlers own copies
// of both functions, so whatever they capture (the server's shared state)
// lives as long as the loop; the acceptor must too.
void accept_each(asio::ip::tcp::acceptor& acceptor, std::function<bool()> stopped,
                 std::function<void(asio::ip::tcp::socket)> accepted);

}  // namespace p2pshare
