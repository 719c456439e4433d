#include "command.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/peer_server.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::cmd {

// clang-format off
void add_help(cxxopts::Options& options) { options.add_options()("h,help", "Show this help"); }

cxxopts::ParseResult parse(cxxopts::Options& options, int argc, char** argv, const std::vector<std::string>& required) {
  cxxopts::ParseResult result;
  // clang-format on
  try {
    result = options.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    throw Error(Errc::usage, e.what());
  }
  if (result.count("help")) {
    std::cout << options.help() << std::flush;
    // Parsing runs before the command starts any thread.
    std::exit(0);  // NOLINT(concurrency-mt-unsafe)
  }
  if (!result.unmatched().empty()) {
    throw Error(Errc::usage, fmt::format("unexpected argument '{}'", result.unmatched().front()));
  }
  for (const auto& name : required) {
    if (result.count(name) == 0) throw Error(Errc::usage, fmt::format("option '--{}' is required", name));
  }
  return result;
}

FileId parse_file_id(const std::string& text) {
  auto id = file_id_from_hex(text);
  if (!id) throw Error(Errc::usage, fmt::format("malformed file id '{}': expected 64 hex digits", text));
  return *id;
}

[[noreturn]] void throw_remote(const pb::Error& error) {
  Errc code = Errc::unavailable;
  if (error.code() >= 1 && error.code() <= 8) code = static_cast<Errc>(error.code());
  throw Error(code, error.message().empty() ? "the server reported an error" : error.message());
}

ControlClient::ControlClient(const cli::Address& peer, const std::filesystem::path& data_dir)
    : client_(protocol::kControlLimits) {
  std::string raw;
  try {
    store::FileHandle file(::open(peer::cookie_path(data_dir).c_str(), O_RDONLY | O_CLOEXEC));
    if (!file) throw Error(Errc::unauthorized, "");
    raw.resize(64);
    const ssize_t n = ::read(file.get(), raw.data(), raw.size());
    if (n != 32) throw Error(Errc::unauthorized, "");
    raw.resize(32);
  } catch (const Error&) {
    throw Error(
        Errc::unauthorized,
        fmt::format("cannot read the control cookie in {}: pass the peer-server's --data-dir", data_dir.string()));
  }
  const std::string cookie = to_hex(std::span(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size()));
  // The peer-server must prove the key of the certificate beside the cookie:
  // the cookie goes to no one else.
  const auto cert_path = data_dir / tls::kCertFile;
  tls::KeyHash expected{};
  try {
    expected = tls::key_hash_of_cert_file(cert_path);
  } catch (const Error& e) {
    throw Error(Errc::unauthorized,
                fmt::format("not authorized: no peer-server certificate to check against ({}): pass the "
                            "peer-server's --data-dir",
                            e.what()));
  }
  client_.connect(
      peer.host, peer.port, std::chrono::seconds(5), [&](const tls::KeyHash& presented) -> std::optional<std::string> {
        if (presented == expected) return std::nullopt;
        return fmt::format(
            "not authorized: the peer-server at {} presented key fingerprint {}, not the "
            "key of {} ({}): is --data-dir the peer-server's?",
            peer.to_string(), tls::fingerprint_of(presented), cert_path.string(), tls::fingerprint_of(expected));
      });
  client_.send(protocol::hello(pb::PLANE_CONTROL, {}, cookie), std::chrono::seconds(5));
  auto ack = receive(std::chrono::seconds(10));
  if (ack.has_error()) throw_remote(ack.error());
}

void ControlClient::send(const pb::ControlRequest& request) {
  client_.send(request.SerializeAsString(), std::chrono::seconds(10));
}

pb::ControlResponse ControlClient::receive(std::chrono::milliseconds timeout) {
  pb::ControlResponse response;
  const std::string message = client_.receive(timeout);
  if (!response.ParseFromString(message)) throw Error(Errc::protocol, "malformed answer from the peer-server");
  return response;
}

void add_control_options(cxxopts::Options& options) {
  // clang-format off
  options.add_options()
      ("peer-addr", "Your peer-server, HOST:PORT", cxxopts::value<std::string>()->default_value(kDefaultPeerAddr))
      ("data-dir", "The peer-server's --data-dir (holds the control cookie)",
       cxxopts::value<std::string>()->default_value(cli::default_data_dir("peer").string()))
      ("json", "Print one JSON value on stdout");
  // clang-format on
  add_help(options);
}

ControlClient connect_control(const cxxopts::ParseResult& args) {
  return ControlClient(cli::parse_address(args["peer-addr"].as<std::string>()),
                       std::filesystem::path(args["data-dir"].as<std::string>()));
}

void add_central_options(cxxopts::Options& options) {
  // clang-format off
  options.add_options()
      ("central-server-addr", "The central server, HOST:PORT",
       cxxopts::value<std::string>()->default_value(kDefaultCentralAddr))
      ("central-fingerprint", "The central server's key fingerprint (64 hex digits), pinned: nothing is recorded",
       cxxopts::value<std::string>())
      ("data-dir", "Where the fingerprints of central servers met before are kept (known_centrals)",
       cxxopts::value<std::string>()->default_value(cli::default_data_dir("peer").string()))
      ("json", "Print one JSON value on stdout");
  // clang-format on
  add_help(options);
}

std::optional<tls::KeyHash> parse_fingerprint_option(const cxxopts::ParseResult& args) {
  if (args.count("central-fingerprint") == 0) return std::nullopt;
  const auto text = args["central-fingerprint"].as<std::string>();
  auto hash = tls::key_hash_from_fingerprint(text);
  if (!hash) throw Error(Errc::usage, fmt::format("--central-fingerprint wants 64 hex digits, not '{}'", text));
  return hash;
}

CentralTarget central_address(const cxxopts::ParseResult& args) {
  return CentralTarget{cli::parse_address(args["central-server-addr"].as<std::string>()),
                       parse_fingerprint_option(args), std::filesystem::path(args["data-dir"].as<std::string>())};
}

pb::CentralResponse ask_central(const CentralTarget& central, pb::CentralRequest request) {
  // Lists and queries need no certificate of ours; the server's key must be
  // the pinned or remembered one before anything is sent.
  wire::SyncClient client(protocol::kCentralLimits);
  client.connect(
      central.address.host, central.address.port, std::chrono::seconds(5), [&](const tls::KeyHash& presented) {
        return tls::check_central_key(central.address.to_string(), presented, central.pinned, central.data_dir);
      });
  client.send(protocol::hello(pb::PLANE_CENTRAL), std::chrono::seconds(5));
  request.set_request_id(1);
  client.send(request.SerializeAsString(), std::chrono::seconds(5));
  pb::CentralResponse response;
  if (!response.ParseFromString(client.receive(std::chrono::seconds(30)))) {
    throw Error(Errc::protocol, "malformed answer from the central server");
  }
  if (response.has_error()) throw_remote(response.error());
  return response;
}

void print_json(const nlohmann::json& value) {
  std::cout << value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n" << std::flush;
}

void set_log_level(const std::string& level) {
  if (level == "debug") return log::set_level(log::Level::debug);
  if (level == "info") return log::set_level(log::Level::info);
  if (level == "warn") return log::set_level(log::Level::warn);
  if (level == "error") return log::set_level(log::Level::error);
  throw Error(Errc::usage, fmt::format("unknown log level '{}' (debug, info, warn, error)", level));
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& raw_rows) {
  // Cells hold names strangers chose: nothing in them may drive the terminal
  // or reorder what it shows.
  std::vector<std::vector<std::string>> rows;
  rows.reserve(raw_rows.size());
  for (const auto& raw : raw_rows) {
    auto& row = rows.emplace_back();
    for (const auto& cell : raw) row.push_back(store::display_name(cell));
  }
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size() && i < width.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out;
    for (std::size_t i = 0; i < cells.size(); ++i) {
      out += cells[i];
      if (i + 1 < cells.size()) out += std::string(width[i] - cells[i].size() + 2, ' ');
    }
    std::cout << out << "\n";
  };
  line(header);
  for (const auto& row : rows) line(row);
  std::cout << std::flush;
}

}  // namespace p2pshare::cmd
