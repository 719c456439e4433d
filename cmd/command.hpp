// What every command file provides, and the plumbing they share: option
// parsing with the CONTRACT's exit statuses, the two client connections
// (control to the own peer-server, central), and output helpers.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "central.pb.h"
#include "config.hpp"
#include "control.pb.h"
#include "p2pshare/cli.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/types.hpp"
#include "p2pshare/wire.hpp"

namespace p2pshare::cmd {

// `run` calls parse() before anything else: the config file's checks run
// each command's option setup alone to learn its options (parse() stops it).
struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

const std::vector<Command>& commands();
// A command's options as the config file sees them; nullopt for no such command.
std::optional<std::vector<config::OptionSpec>> options_of_command(const std::string& name);

// Parses argv with `options` (adding --config, and the config file's values
// for the options the command line leaves out: cmd/config.hpp); prints help
// and exits 0 on --help; throws Error(usage) on an unknown flag, a missing
// value, a missing required one, a bad config file.
cxxopts::ParseResult parse(cxxopts::Options& options, int argc, char** argv,
                           const std::vector<std::string>& required = {});
void add_help(cxxopts::Options& options);
// The value checks an option's string goes through beyond its type (an
// address, a rate, a fingerprint...): the config file holds its values to
// them. Throws Error(usage).
void check_option_value(const std::string& name, const std::string& value);
// "7d", "12h", "30m", "90s"; a bare number is seconds. Throws Error(usage) naming `flag`.
std::chrono::milliseconds parse_duration(std::string_view flag, const std::string& text);

FileId parse_file_id(const std::string& text);

// What proves a client is the peer-server's owner, and what the peer-server
// must prove in turn: the cookie and the certificate in its data dir.
struct ControlCredentials {
  std::string cookie;               // 64 hex digits, for the control Hello
  tls::KeyHash key{};               // the key the peer-server must present
  std::filesystem::path cert_path;  // where that key was read (for the refusal line)
};
// Throws Error(unauthorized) naming --data-dir when the cookie or the
// certificate cannot be read.
ControlCredentials read_control_credentials(const std::filesystem::path& data_dir);
// The refusal line when `presented` is not the data dir's key; nullopt when it is.
std::optional<std::string> refuse_control_key(const cli::Address& peer, const ControlCredentials& credentials,
                                              const tls::KeyHash& presented);

// The owner's connection to its peer-server's control side.
class ControlClient {
 public:
  ControlClient(const cli::Address& peer, const std::filesystem::path& data_dir);
  void send(const pb::ControlRequest& request);
  pb::ControlResponse receive(std::chrono::milliseconds timeout = std::chrono::seconds(30));

 private:
  wire::SyncClient client_;
};

inline constexpr const char* kDefaultCentralAddr = "127.0.0.1:7070";
inline constexpr const char* kDefaultPeerAddr = "127.0.0.1:7071";

// --peer-addr, --data-dir, --json for the commands that talk to a peer-server.
void add_control_options(cxxopts::Options& options);
ControlClient connect_control(const cxxopts::ParseResult& args);
// Where the central server is and which key it must prove: one or more
// addresses (--central-server-addr A,B,...), tried in order.
struct CentralTarget {
  std::vector<cli::Address> addresses;
  std::optional<tls::KeyHash> pinned;  // --central-fingerprint
  std::filesystem::path data_dir;      // holds known_centrals
};

// --central-server-addr, --central-fingerprint, --data-dir, --json for the
// commands that talk to the central server.
void add_central_options(cxxopts::Options& options);
CentralTarget central_address(const cxxopts::ParseResult& args);
// --central-fingerprint's value: throws Error(usage) unless 64 hex digits.
std::optional<tls::KeyHash> parse_fingerprint_option(const cxxopts::ParseResult& args);
tls::KeyHash parse_fingerprint(const std::string& text);

// One request, one answer, to the central server: the first address of the
// list that answers. An address that cannot be reached, times out or answers
// "unavailable" passes the request to the next; any other error is the
// answer. Throws Error(unavailable) naming every address when none answers.
pb::CentralResponse ask_central(const CentralTarget& central, pb::CentralRequest request);

// Throws the Error carried by a response, with its code.
[[noreturn]] void throw_remote(const pb::Error& error);

void print_json(const nlohmann::json& value);
// --log-level: throws Error(usage) for an unknown level.
void set_log_level(const std::string& level);
// Prints rows as aligned columns under a header.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

}  // namespace p2pshare::cmd
