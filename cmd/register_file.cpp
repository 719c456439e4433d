// p2pshare register-file --path FILE
#include <charconv>
#include <iostream>
#include <optional>
#include <system_error>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"

namespace p2pshare::cmd {

int run_register_file(int argc, char** argv) {
  cxxopts::Options options("p2pshare register-file", "Hash FILE; your peer-server starts serving and announcing it.");
  options.add_options()("path", "The file to share", cxxopts::value<std::string>())(
      "group", "Share it with this group's members only (you must be logged in and a member)",
      cxxopts::value<std::string>())(
      "replicas", "Ask for the file to be held by N live peers besides this one (0..16), volunteers fetching it",
      cxxopts::value<std::string>());
  add_control_options(options);
  auto args = parse(options, argc, argv, {"path"});
  // The peer-server runs elsewhere in the file tree: it gets an absolute path,
  // checked here first so the user hears about a typo at once.
  std::error_code ec;
  const auto path = std::filesystem::absolute(args["path"].as<std::string>(), ec);
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) throw Error(Errc::not_found, fmt::format("{}: no such file", path.string()));
  if (!std::filesystem::is_regular_file(status)) {
    throw Error(Errc::bad_request, fmt::format("{} is not a regular file", path.string()));
  }
  std::optional<std::uint32_t> replicas;
  if (args.count("replicas")) {
    const std::string text = args["replicas"].as<std::string>();
    std::uint32_t n = 0;
    const auto parsed = std::from_chars(text.data(), text.data() + text.size(), n);
    if (parsed.ec != std::errc() || parsed.ptr != text.data() + text.size() || text.empty() || n > 16) {
      throw Error(Errc::usage, fmt::format("--replicas must be a number from 0 to 16, not '{}'", text));
    }
    replicas = n;
  }
  auto control = connect_control(args);
  pb::ControlRequest request;
  request.mutable_register_file()->set_path(path.string());
  if (args.count("group")) request.mutable_register_file()->set_group(args["group"].as<std::string>());
  if (replicas) request.mutable_register_file()->set_replicas(*replicas);
  control.send(request);
  // Hashing a large file takes a while on the peer-server's side.
  auto response = control.receive(std::chrono::minutes(30));
  if (response.has_error()) throw_remote(response.error());
  if (!response.has_registered()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
  const auto& r = response.registered();
  const std::string id =
      to_hex(std::span(reinterpret_cast<const std::uint8_t*>(r.file_id().data()), r.file_id().size()));
  if (args.count("json")) {
    print_json({{"file_id", id},
                {"name", r.name()},
                {"size", r.size()},
                {"chunk_size", r.chunk_size()},
                {"chunks", r.chunks()}});
  } else {
    std::cout << id << "\n";
  }
  return 0;
}

}  // namespace p2pshare::cmd
