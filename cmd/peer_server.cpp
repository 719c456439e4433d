// p2pshare peer-server
#include <iostream>

#include <asio.hpp>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/peer_server.hpp"
#include "servers.hpp"

namespace p2pshare::cmd {

int run_peer_server(int argc, char** argv) {
  const auto default_dir = cli::default_data_dir("peer");
  cxxopts::Options options("p2pshare peer-server",
                           "Serve the files you register, download files from every peer that has them.");
  // clang-format off
  options.add_options()
      ("central-server-addr", "The central server, HOST:PORT; or several, HOST:PORT,HOST:PORT,... (up to 16): "
       "one is used, the next when it stops answering", cxxopts::value<std::string>())
      ("central-fingerprint", "The central server's key fingerprint (64 hex digits), pinned: nothing is recorded",
       cxxopts::value<std::string>())
      ("addr", "Address to listen on for peers and your own commands, HOST:PORT (port 0: pick one)",
       cxxopts::value<std::string>())
      ("data-dir", "Identity, control cookie, shared files and resume state",
       cxxopts::value<std::string>()->default_value(default_dir.string()))
      ("download-dir", "Where finished downloads go (default: DATA-DIR/downloads)", cxxopts::value<std::string>())
      ("upload-limit", "Upload rate cap for all peers together, e.g. 16M (MiB/s), 500K; 0 = unlimited",
       cxxopts::value<std::string>()->default_value("0"))
      ("download-limit", "Download rate cap, same form; 0 = unlimited", cxxopts::value<std::string>()->default_value("0"))
      ("max-connections", "Connections served at once; more are refused",
       cxxopts::value<std::size_t>()->default_value("4096"))
      ("request-timeout", "Milliseconds before an unanswered chunk request marks a peer as stalled",
       cxxopts::value<unsigned>()->default_value("15000"))
      ("holder-refresh", "Milliseconds between asking the central server for new holders while downloading",
       cxxopts::value<unsigned>()->default_value("2000"))
      ("share-dir", "Share every file under this folder, and keep it shared as files come, change and go "
       "(may be given more than once)", cxxopts::value<std::vector<std::string>>())
      ("http-addr", "Serve the dashboard, /metrics, the JSON API and /files/ID over plain HTTP on HOST:PORT "
       "(loopback, or behind a TLS proxy); every request needs the control cookie", cxxopts::value<std::string>())
      ("log-level", "debug, info, warn or error", cxxopts::value<std::string>()->default_value("info"));
  // clang-format on
  add_help(options);
  auto args = parse(options, argc, argv, {"central-server-addr", "addr"});
  set_log_level(args["log-level"].as<std::string>());

  peer::PeerConfig config;
  config.centrals = cli::parse_address_list(args["central-server-addr"].as<std::string>());
  config.listen = cli::parse_address(args["addr"].as<std::string>());
  config.data_dir = args["data-dir"].as<std::string>();
  config.download_dir = args.count("download-dir") ? std::filesystem::path(args["download-dir"].as<std::string>())
                                                   : config.data_dir / "downloads";
  config.data_dir = std::filesystem::absolute(config.data_dir);
  config.download_dir = std::filesystem::absolute(config.download_dir);
  config.upload_limit = cli::parse_rate(args["upload-limit"].as<std::string>());
  config.download_limit = cli::parse_rate(args["download-limit"].as<std::string>());
  config.max_connections = args["max-connections"].as<std::size_t>();
  config.sched.request_timeout = std::chrono::milliseconds(args["request-timeout"].as<unsigned>());
  config.holder_refresh = std::chrono::milliseconds(args["holder-refresh"].as<unsigned>());
  config.central_fingerprint = parse_fingerprint_option(args);
  if (args.count("share-dir")) {
    for (const auto& dir : args["share-dir"].as<std::vector<std::string>>()) {
      std::error_code ec;
      auto canonical = std::filesystem::canonical(dir, ec);
      if (ec || !std::filesystem::is_directory(canonical)) {
        throw Error(Errc::usage, fmt::format("--share-dir {}: not a folder", dir));
      }
      config.share_dirs.push_back(std::move(canonical));
    }
  }
  if (args.count("http-addr")) config.http = cli::parse_address(args["http-addr"].as<std::string>());

  asio::io_context io(1);
  peer::PeerServer server(io, config);
  const auto bound = server.start();
  if (auto http = server.http_address()) std::cout << "http on " << http->to_string() << std::endl;
  return serve(io, bound, [&] { server.stop(); });
}

}  // namespace p2pshare::cmd
