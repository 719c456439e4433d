#include "p2pshare/listen.hpp"

#include <memory>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare {

cli::Address listen_on(asio::ip::tcp::acceptor& acceptor, const cli::Address& address) {
  asio::ip::tcp::resolver resolver(acceptor.get_executor());
  std::error_code ec;
  auto results = resolver.resolve(address.host, std::to_string(address.port), ec);
  if (ec || results.empty()) {
    throw Error(Errc::unavailable, fmt::format("cannot resolve {}: {}", address.to_string(), ec.message()));
  }
  const auto endpoint = results.begin()->endpoint();
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw Error(Errc::unavailable, fmt::format("cannot listen on {}: {}", address.to_string(), ec.message()));
  const auto local = acceptor.local_endpoint();
  return cli::Address{local.address().to_string(), local.port()};
}

namespace {

struct AcceptLoop : std::enable_shared_from_this<AcceptLoop> {
  AcceptLoop(asio::ip::tcp::acceptor& acceptor_to_use, std::function<bool()> is_stopped,
             std::function<void(asio::ip::tcp::socket)> on_accepted)
      : acceptor(acceptor_to_use), stopped(std::move(is_stopped)), accepted(std::move(on_accepted)) {}

  void next() {
    acceptor.async_accept([self = shared_from_this()](const std::error_code& ec, asio::ip::tcp::socket socket) {
      if (self->stopped() || ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) self->accepted(std::move(socket));
      self->next();
    });
  }

  asio::ip::tcp::acceptor& acceptor;
  std::function<bool()> stopped;
  std::function<void(asio::ip::tcp::socket)> accepted;
};

}  // namespace

void accept_each(asio::ip::tcp::acceptor& acceptor, std::function<bool()> stopped,
                 std::function<void(asio::ip::tcp::socket)> accepted) {
  std::make_shared<AcceptLoop>(acceptor, std::move(stopped), std::move(accepted))->next();
}

}  // namespace p2pshare
