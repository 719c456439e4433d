#include "config.hpp"

#include <array>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <system_error>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "command.hpp"
#include "p2pshare/error.hpp"

namespace p2pshare::cmd::config {
namespace {

// One line, whatever the library's description holds.
std::string one_line(std::string_view text) {
  std::string out(text);
  for (auto& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

struct Where {
  std::string file;
  std::size_t line = 0;
  std::string key;
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(Errc::usage, fmt::format("{}:{}: key '{}': {}", file, line, key, why));
  }
};

// A scalar as the command line would spell it.
std::optional<std::string> scalar_text(const toml::node& node) {
  if (const auto* s = node.as_string()) return s->get();
  if (const auto* i = node.as_integer()) return std::to_string(i->get());
  if (const auto* f = node.as_floating_point()) return fmt::format("{}", f->get());
  return std::nullopt;
}

const char* type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::boolean:
      return "true or false";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date or time";
    default:
      return "a value";
  }
}

// The arguments one key gives, checked by cxxopts and by the option's own
// value check.
std::vector<std::string> arguments_of(const Where& where, const OptionSpec& spec, const toml::node& node,
                                      cxxopts::Options& options) {
  std::vector<std::string> values;
  if (spec.flag) {
    const auto* b = node.as_boolean();
    if (b == nullptr)
      where.fail(fmt::format("--{} takes no value: write true or false, not {}", spec.name, type_name(node)));
    if (!b->get()) return {};
    return {"--" + spec.name};
  }
  if (const auto* array = node.as_array()) {
    // An option whose one value is a comma-separated list takes an array too.
    const bool comma_list = spec.name == "central-server-addr";
    if (!spec.repeatable && !comma_list) where.fail(fmt::format("--{} takes one value, not an array", spec.name));
    for (const auto& element : *array) {
      auto text = scalar_text(element);
      if (!text)
        where.fail(fmt::format("--{} wants strings or numbers in its array, not {}", spec.name, type_name(element)));
      values.push_back(*text);
    }
    if (comma_list) {
      if (values.empty()) where.fail(fmt::format("--{} wants at least one address", spec.name));
      std::string joined;
      for (std::size_t i = 0; i < values.size(); ++i) joined += (i == 0 ? "" : ",") + values[i];
      values = {joined};
    }
  } else {
    auto text = scalar_text(node);
    if (!text) where.fail(fmt::format("--{} wants a string or a number, not {}", spec.name, type_name(node)));
    values.push_back(*text);
  }
  std::vector<std::string> arguments;
  for (const auto& value : values) {
    // The command line's own parser decides the type: "abc" for a number
    // fails here exactly as it would there.
    std::vector<std::string> trial_args{"p2pshare", "--" + spec.name + "=" + value};
    std::array<char*, 2> trial_argv{trial_args[0].data(), trial_args[1].data()};
    try {
      (void)options.parse(static_cast<int>(trial_argv.size()), trial_argv.data());
    } catch (const cxxopts::exceptions::exception& e) {
      where.fail(one_line(e.what()));
    }
    try {
      check_option_value(spec.name, value);
    } catch (const Error& e) {
      where.fail(e.what());
    }
    arguments.push_back(trial_args[1]);
  }
  return arguments;
}

const OptionSpec* find(const std::vector<OptionSpec>& specs, std::string_view name) {
  for (const auto& s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

}  // namespace

std::filesystem::path default_path() {
  // Read while the command starts, before any thread; nothing calls setenv.
  // NOLINTNEXTLINE(concurrency-mt-unsafe)
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::filesystem::path(xdg) / "p2pshare" / "config.toml";
  }
  const char* home = std::getenv("HOME");  // NOLINT(concurrency-mt-unsafe): as above
  return std::filesystem::path(home != nullptr && *home != '\0' ? home : ".") / ".config" / "p2pshare" / "config.toml";
}

std::vector<OptionSpec> specs_of(const cxxopts::Options& options) {
  std::vector<OptionSpec> specs;
  for (const auto& group : options.groups()) {
    for (const auto& details : options.group_help(group).options) {
      if (details.l.empty()) continue;
      specs.push_back(OptionSpec{details.l.front(), details.is_boolean, details.is_container});
    }
  }
  return specs;
}

std::vector<std::string> arguments_from_file(
    const std::filesystem::path& path, const std::string& command, cxxopts::Options& options,
    const cxxopts::ParseResult& given,
    const std::function<std::optional<std::vector<OptionSpec>>(const std::string& command)>& all_commands) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(Errc::usage, fmt::format("cannot read the config file {}: {}", file,
                                         std::error_code(errno, std::generic_category()).message()));
  }
  toml::table table;
  try {
    table = toml::parse(in, file);
  } catch (const toml::parse_error& e) {
    throw Error(Errc::usage,
                fmt::format("{}:{}: syntax error: {}", file, e.source().begin.line, one_line(e.description())));
  }
  const auto mine = specs_of(options);
  // Every command's options, built once when a key is not one of ours.
  std::map<std::string, std::vector<OptionSpec>> others;
  auto options_of = [&](const std::string& name) -> const std::vector<OptionSpec>* {
    auto it = others.find(name);
    if (it == others.end()) {
      auto specs = all_commands(name);
      if (!specs) return nullptr;
      it = others.emplace(name, std::move(*specs)).first;
    }
    return &it->second;
  };
  auto known_anywhere = [&](std::string_view key) {
    for (const auto& c : commands()) {
      const auto* specs = options_of(c.name);
      if (specs != nullptr && find(*specs, key) != nullptr) return true;
    }
    return false;
  };
  auto refuse_special = [&](const Where& where) {
    if (where.key == "config") where.fail("a config file cannot name another one");
    if (where.key == "help") where.fail("unknown key (help is for the command line)");
  };

  // name -> its arguments. Top-level keys first, then the command's own
  // table, whose values replace theirs.
  std::map<std::string, std::vector<std::string>> chosen;
  for (const auto& [key, node] : table) {
    if (node.is_table()) continue;
    const Where where{file, key.source().begin.line, std::string(key.str())};
    refuse_special(where);
    const auto* spec = find(mine, where.key);
    if (spec == nullptr) {
      if (!known_anywhere(where.key)) where.fail("unknown key: no command has such an option");
      continue;  // another command's option
    }
    chosen[where.key] = arguments_of(where, *spec, node, options);
  }
  for (const auto& [key, node] : table) {
    const auto* section = node.as_table();
    if (section == nullptr) continue;
    const std::string name(key.str());
    const auto* specs = options_of(name);
    if (specs == nullptr) {
      throw Error(Errc::usage,
                  fmt::format("{}:{}: unknown section [{}]: sections are command names (see 'p2pshare --help')", file,
                              key.source().begin.line, name));
    }
    for (const auto& [inner_key, inner_node] : *section) {
      const Where inner{file, inner_key.source().begin.line, std::string(inner_key.str())};
      refuse_special(inner);
      const auto* spec = find(*specs, inner.key);
      if (spec == nullptr) inner.fail(fmt::format("unknown key: {} has no --{}", name, inner.key));
      if (name != command) continue;  // its values are checked when that command runs
      chosen[inner.key] = arguments_of(inner, *spec, inner_node, options);
    }
  }
  std::vector<std::string> arguments;
  for (auto& [name, args] : chosen) {
    if (given.count(name) > 0) continue;  // the command line wins
    arguments.insert(arguments.end(), args.begin(), args.end());
  }
  return arguments;
}

}  // namespace p2pshare::cmd::config
