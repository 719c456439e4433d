// p2pshare central-server
#include <charconv>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>
#include <asio.hpp>

#include "command.hpp"
#include "p2pshare/central_server.hpp"
#include "p2pshare/db.hpp"
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
      ("data-dir", "Where the key pair is kept, and the registry with --store sqlite",
       cxxopts::value<std::string>()->default_value(default_dir.string()))
      ("store", "Where the registry is kept: sqlite (registry.db in --data-dir) or a PostgreSQL URL, "
       "postgresql://USER@HOST:PORT/DB or postgresql:///DB?host=/socket/dir",
       cxxopts::value<std::string>()->default_value("sqlite"))
      ("heartbeat-interval", "Milliseconds between peer heartbeats; a peer silent for 3 is not live",
       cxxopts::value<unsigned>()->default_value("10000"))
      ("max-connections", "Connections served at once; more are refused",
       cxxopts::value<std::size_t>()->default_value("4096"))
      ("max-files-per-peer", "Files one peer may announce; more are refused",
       cxxopts::value<std::size_t>()->default_value("10000"))
      ("max-chunks-per-peer", "Chunks (32 bytes of hash each) in all the files one peer announces; more are refused",
       cxxopts::value<std::uint64_t>()->default_value("4194304"))
      ("max-new-peers-per-minute", "New peer identities one address (IPv6: one /64) may register a minute, "
       "in bursts of as many; 0 = no limit",
       cxxopts::value<std::uint32_t>()->default_value("60"))
      ("forget-after", "Forget peers not seen for this long, and files nobody holds (7d, 12h, 30m, 90s)",
       cxxopts::value<std::string>()->default_value("7d"))
      ("http-addr", "Serve the dashboard, /metrics and the read-only JSON API over plain HTTP on HOST:PORT",
       cxxopts::value<std::string>())
      ("capability-lifetime", "How long a group capability is valid: the most a holder may go on serving a user who "
       "left the group (5m, 90s; 2s to 1h)",
       cxxopts::value<std::string>()->default_value("5m"))
      ("log-level", "debug, info, warn or error", cxxopts::value<std::string>()->default_value("info"));
  // clang-format on
  add_help(options);
  auto args = parse(options, argc, argv, {"addr"});
  set_log_level(args["log-level"].as<std::string>());

  central::ServerConfig config;
  config.listen = cli::parse_address(args["addr"].as<std::string>());
  config.data_dir = args["data-dir"].as<std::string>();
  config.store = args["store"].as<std::string>();
  // A malformed URL is a usage error (exit 2) before anything starts.
  (void)db::parse_location(config.store, config.data_dir, "registry.db");
  const unsigned heartbeat = args["heartbeat-interval"].as<unsigned>();
  if (heartbeat < 50) throw Error(Errc::usage, "--heartbeat-interval must be at least 50 ms");
  config.heartbeat_interval = std::chrono::milliseconds(heartbeat);
  config.max_connections = args["max-connections"].as<std::size_t>();
  config.limits.max_files_per_peer = args["max-files-per-peer"].as<std::size_t>();
  config.limits.max_chunks_per_peer = args["max-chunks-per-peer"].as<std::uint64_t>();
  config.limits.new_peers_per_minute = args["max-new-peers-per-minute"].as<std::uint32_t>();
  config.limits.forget_after = parse_duration("--forget-after", args["forget-after"].as<std::string>());
  // A connected peer is seen every heartbeat: forgetting it sooner than a
  // few of them would make live peers register over and over.
  if (config.limits.forget_after <
      std::max<std::chrono::milliseconds>(config.heartbeat_interval * 4, std::chrono::seconds(1))) {
    throw Error(Errc::usage, "--forget-after must be at least 1s and 4 heartbeat intervals");
  }

  if (args.count("http-addr")) config.http = cli::parse_address(args["http-addr"].as<std::string>());
  config.capability_lifetime = parse_duration("--capability-lifetime", args["capability-lifetime"].as<std::string>());
  if (config.capability_lifetime < std::chrono::seconds(2) || config.capability_lifetime > std::chrono::hours(1)) {
    throw Error(Errc::usage, "--capability-lifetime must be from 2s to 1h");
  }

  asio::io_context io(1);
  central::CentralServer server(io, config);
  const auto bound = server.start();
  if (auto http = server.http_address()) std::cout << "http on " << http->to_string() << std::endl;
  return serve(
      io, bound, [&] { server.stop(); }, server.fingerprint());
}

}  // namespace p2pshare::cmd
