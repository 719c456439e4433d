// p2pshare central-server
#include <asio.hpp>

#include "command.hpp"
#include "p2pshare/central_server.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "servers.hpp"

namespace p2pshare::cmd {

int run_central_server(int argc, char** argv) {
  const auto default_dir = cli::default_data_dir("central");
  cxxopts::Options options("p2pshare central-server", "The registry of live peers and the files they share.");
  // clang-format off
  options.add_options()
      ("addr", "Address to listen on, HOST:PORT (port 0: pick a free one)", cxxopts::value<std::string>())
      ("data-dir", "Where the registry is kept (SQLite)", cxxopts::value<std::string>()->default_value(default_dir.string()))
      ("heartbeat-interval", "Milliseconds between peer heartbeats; a peer silent for 3 is not live",
       cxxopts::value<unsigned>()->default_value("10000"))
      ("max-connections", "Connections served at once; more are refused",
       cxxopts::value<std::size_t>()->default_value("4096"))
      ("log-level", "debug, info, warn or error", cxxopts::value<std::string>()->default_value("info"));
  // clang-format on
  add_help(options);
  auto args = parse(options, argc, argv, {"addr"});
  set_log_level(args["log-level"].as<std::string>());

  central::ServerConfig config;
  config.listen = cli::parse_address(args["addr"].as<std::string>());
  config.data_dir = args["data-dir"].as<std::string>();
  const unsigned heartbeat = args["heartbeat-interval"].as<unsigned>();
  if (heartbeat < 50) throw Error(Errc::usage, "--heartbeat-interval must be at least 50 ms");
  config.heartbeat_interval = std::chrono::milliseconds(heartbeat);
  config.max_connections = args["max-connections"].as<std::size_t>();

  asio::io_context io(1);
  central::CentralServer server(io, config);
  const auto bound = server.start();
  return serve(io, bound, [&] { server.stop(); });
}

}  // namespace p2pshare::cmd
