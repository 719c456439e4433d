#include "command.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <iostream>

#include <fmt/format.h>

#include "config.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/peer_server.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::cmd {

void add_help(cxxopts::Options& options) {
  options.add_options()("h,help", "Show this help");
}

namespace {

// Thrown by parse() while a command's options are being collected: the
// command stops before doing anything.
struct OptionsCollected {};
thread_local std::vector<config::OptionSpec>* collecting = nullptr;

cxxopts::ParseResult parse_arguments(cxxopts::Options& options, int argc, char** argv) {
  try {
    return options.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    throw Error(Errc::usage, e.what());
  }
}

}  // namespace

std::optional<std::vector<config::OptionSpec>> options_of_command(const std::string& name) {
  for (const auto& command : commands()) {
    if (name != command.name) continue;
    std::vector<config::OptionSpec> specs;
    std::string program = name;
    std::array<char*, 2> argv{program.data(), nullptr};
    collecting = &specs;
    try {
      command.run(1, argv.data());
    } catch (const OptionsCollected&) {
    } catch (...) {
      collecting = nullptr;
      throw;
    }
    collecting = nullptr;
    return specs;
  }
  return std::nullopt;
}

cxxopts::ParseResult parse(cxxopts::Options& options, int argc, char** argv, const std::vector<std::string>& required) {
  // clang-format off
  options.add_options()
      ("config", "Read options from this TOML file; the command line wins (default: "
       "$XDG_CONFIG_HOME/p2pshare/config.toml or ~/.config/p2pshare/config.toml, when it exists)",
       cxxopts::value<std::string>());
  // clang-format on
  if (collecting != nullptr) {
    *collecting = config::specs_of(options);
    throw OptionsCollected{};
  }
  cxxopts::ParseResult result = parse_arguments(options, argc, argv);
  if (result.count("help")) {
    std::cout << options.help() << std::flush;
    // Parsing runs before the command starts any thread.
    std::exit(0);  // NOLINT(concurrency-mt-unsafe)
  }
  if (!result.unmatched().empty()) {
    throw Error(Errc::usage, fmt::format("unexpected argument '{}'", result.unmatched().front()));
  }
  std::optional<std::filesystem::path> file;
  if (result.count("config")) {
    file = result["config"].as<std::string>();
  } else if (auto fallback = config::default_path(); std::filesystem::exists(fallback)) {
    file = fallback;
  }
  if (file) {
    // The file's options go first; none of them is on the command line.
    auto from_file = config::arguments_from_file(*file, argv[0], options, result, options_of_command);
    if (!from_file.empty()) {
      std::vector<char*> merged{argv[0]};
      for (auto& a : from_file) merged.push_back(a.data());
      for (int i = 1; i < argc; ++i) merged.push_back(argv[i]);
      result = parse_arguments(options, static_cast<int>(merged.size()), merged.data());
    }
  }
  for (const auto& name : required) {
    if (result.count(name) == 0) throw Error(Errc::usage, fmt::format("option '--{}' is required", name));
  }
  return result;
}

void check_option_value(const std::string& name, const std::string& value) {
  if (name == "central-server-addr") {
    (void)cli::parse_address_list(value);
  } else if (name == "addr" || name == "peer-addr" || name == "http-addr") {
    (void)cli::parse_address(value);
  } else if (name == "upload-limit" || name == "download-limit") {
    (void)cli::parse_rate(value);
  } else if (name == "central-fingerprint") {
    (void)parse_fingerprint(value);
  } else if (name == "file-id") {
    (void)parse_file_id(value);
  } else if (name == "log-level") {
    set_log_level(value);
  } else if (name == "forget-after") {
    (void)parse_duration("--forget-after", value);
  }
}

FileId parse_file_id(const std::string& text) {
  auto id = file_id_from_hex(text);
  if (!id) throw Error(Errc::usage, fmt::format("malformed file id '{}': expected 64 hex digits", text));
  return *id;
}

[[noreturn]] void throw_remote(const pb::Error& error) {
  Errc code = Errc::unavailable;
  if (error.code() >= 1 && error.code() <= static_cast<int>(Errc::limit)) code = static_cast<Errc>(error.code());
  throw Error(code, error.message().empty() ? "the server reported an error" : error.message());
}

ControlCredentials read_control_credentials(const std::filesystem::path& data_dir) {
  std::optional<std::string> hex;
  if (store::FileHandle file(::open(peer::cookie_path(data_dir).c_str(), O_RDONLY | O_CLOEXEC)); file) {
    std::string raw(peer::kCookieFileMax + 1, '\0');
    const ssize_t n = ::read(file.get(), raw.data(), raw.size());
    raw.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    hex = peer::cookie_hex_of(raw);
  }
  if (!hex) {
    throw Error(
        Errc::unauthorized,
        fmt::format("cannot read the control cookie in {}: pass the peer-server's --data-dir", data_dir.string()));
  }
  ControlCredentials credentials;
  credentials.cookie = std::move(*hex);
  // The peer-server must prove the key of the certificate beside the cookie:
  // the cookie goes to no one else.
  credentials.cert_path = data_dir / tls::kCertFile;
  try {
    credentials.key = tls::key_hash_of_cert_file(credentials.cert_path);
  } catch (const Error& e) {
    throw Error(Errc::unauthorized,
                fmt::format("not authorized: no peer-server certificate to check against ({}): pass the "
                            "peer-server's --data-dir",
                            e.what()));
  }
  return credentials;
}

std::optional<std::string> refuse_control_key(const cli::Address& peer, const ControlCredentials& credentials,
                                              const tls::KeyHash& presented) {
  if (presented == credentials.key) return std::nullopt;
  return fmt::format(
      "not authorized: the peer-server at {} presented key fingerprint {}, not the "
      "key of {} ({}): is --data-dir the peer-server's?",
      peer.to_string(), tls::fingerprint_of(presented), credentials.cert_path.string(),
      tls::fingerprint_of(credentials.key));
}

ControlClient::ControlClient(const cli::Address& peer, const std::filesystem::path& data_dir)
    : client_(protocol::kControlLimits) {
  const auto credentials = read_control_credentials(data_dir);
  client_.connect(peer.host, peer.port, std::chrono::seconds(5),
                  [&](const tls::KeyHash& presented) { return refuse_control_key(peer, credentials, presented); });
  client_.send(protocol::hello(pb::PLANE_CONTROL, {}, credentials.cookie), std::chrono::seconds(5));
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
      ("central-server-addr", "The central server, HOST:PORT; or several, HOST:PORT,HOST:PORT,... (up to 16), "
       "tried in order until one answers",
       cxxopts::value<std::string>()->default_value(kDefaultCentralAddr))
      ("central-fingerprint", "The central server's key fingerprint (64 hex digits), pinned: nothing is recorded",
       cxxopts::value<std::string>())
      ("data-dir", "Where the fingerprints of central servers met before are kept (known_centrals)",
       cxxopts::value<std::string>()->default_value(cli::default_data_dir("peer").string()))
      ("json", "Print one JSON value on stdout");
  // clang-format on
  add_help(options);
}

tls::KeyHash parse_fingerprint(const std::string& text) {
  auto hash = tls::key_hash_from_fingerprint(text);
  if (!hash) throw Error(Errc::usage, fmt::format("--central-fingerprint wants 64 hex digits, not '{}'", text));
  return *hash;
}

std::optional<tls::KeyHash> parse_fingerprint_option(const cxxopts::ParseResult& args) {
  if (args.count("central-fingerprint") == 0) return std::nullopt;
  return parse_fingerprint(args["central-fingerprint"].as<std::string>());
}

std::chrono::milliseconds parse_duration(std::string_view flag, const std::string& text) {
  std::uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  std::uint64_t seconds_per_unit = 0;
  if (unit.empty() || unit == "s") seconds_per_unit = 1;
  if (unit == "m") seconds_per_unit = 60;
  if (unit == "h") seconds_per_unit = 3600;
  if (unit == "d") seconds_per_unit = 86400;
  // Beyond ten years a duration means "never" anyway, and it keeps the
  // millisecond arithmetic far from overflowing.
  constexpr std::uint64_t kMaxSeconds = 10ULL * 366 * 86400;
  if (error != std::errc() || end == text.data() || seconds_per_unit == 0 || value > kMaxSeconds / seconds_per_unit) {
    throw Error(Errc::usage, fmt::format("{} wants a duration like 7d, 12h, 30m or 90s, not '{}'", flag, text));
  }
  return std::chrono::seconds(value * seconds_per_unit);
}

CentralTarget central_address(const cxxopts::ParseResult& args) {
  return CentralTarget{cli::parse_address_list(args["central-server-addr"].as<std::string>()),
                       parse_fingerprint_option(args), std::filesystem::path(args["data-dir"].as<std::string>())};
}

namespace {

pb::CentralResponse ask_one_central(const CentralTarget& central, const cli::Address& address,
                                    const pb::CentralRequest& request) {
  // Lists and queries need no certificate of ours; the server's key must be
  // the pinned or remembered one before anything is sent.
  wire::SyncClient client(protocol::kCentralLimits);
  client.connect(address.host, address.port, std::chrono::seconds(5), [&](const tls::KeyHash& presented) {
    return tls::check_central_key(address.to_string(), presented, central.pinned, central.data_dir);
  });
  client.send(protocol::hello(pb::PLANE_CENTRAL), std::chrono::seconds(5));
  client.send(request.SerializeAsString(), std::chrono::seconds(5));
  pb::CentralResponse response;
  if (!response.ParseFromString(client.receive(std::chrono::seconds(30)))) {
    throw Error(Errc::protocol, "malformed answer from the central server");
  }
  if (response.has_error()) throw_remote(response.error());
  return response;
}

}  // namespace

pb::CentralResponse ask_central(const CentralTarget& central, pb::CentralRequest request) {
  request.set_request_id(1);
  if (central.addresses.size() == 1) return ask_one_central(central, central.addresses.front(), request);
  std::string failures;
  for (const auto& address : central.addresses) {
    try {
      return ask_one_central(central, address, request);
    } catch (const Error& e) {
      // Unreachable, timed out, lost, or "unavailable": the next one. A
      // refused key, a bad request or "not found" is the answer.
      if (e.code() != Errc::unavailable) throw;
      failures += fmt::format("{}{} ({})", failures.empty() ? "" : "; ", address.to_string(), e.what());
    }
  }
  throw Error(Errc::unavailable, fmt::format("no central server answered: {}", failures));
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
