// The config file (docs/operations.md, "Config file"): TOML whose keys are
// the long option names. Top-level keys apply to every command that takes
// them; a table named after a command ([peer-server]) applies to that command
// only and wins over the top level; the command line wins over both.
//
// The file's values are turned into the arguments the command line would
// have carried and go through the same cxxopts parse and the same value
// checks, so a value means the same in both places.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <cxxopts.hpp>

namespace p2pshare::cmd::config {

// $XDG_CONFIG_HOME/p2pshare/config.toml, else $HOME/.config/p2pshare/config.toml.
std::filesystem::path default_path();

// What one option of one command looks like to the config file.
struct OptionSpec {
  std::string name;         // the long name, without "--"
  bool flag = false;        // takes no value: true adds it, false leaves it out
  bool repeatable = false;  // a container option: a TOML array
};
std::vector<OptionSpec> specs_of(const cxxopts::Options& options);

// The arguments ("--name=value", "--flag") the file at `path` adds for
// `command` (whose options are `options`), leaving out every option `given`
// on the command line. Throws Error(usage) with one line naming the file, the
// line and the key for a syntax error, an unknown section or key, or a value
// the option refuses. `all_commands` gives every command's options, to tell
// a key meant for another command from a typo.
std::vector<std::string> arguments_from_file(
    const std::filesystem::path& path, const std::string& command, cxxopts::Options& options,
    const cxxopts::ParseResult& given,
    const std::function<std::optional<std::vector<OptionSpec>>(const std::string& command)>& all_commands);

}  // namespace p2pshare::cmd::config
