// p2pshare list-peers [--file-id ID]
#include <iostream>

#include "command.hpp"

namespace p2pshare::cmd {

int run_list_peers(int argc, char** argv) {
  cxxopts::Options options("p2pshare list-peers", "Live peers, or those that hold one file.");
  options.add_options()("file-id", "Only peers holding this file", cxxopts::value<std::string>());
  add_central_options(options);
  auto args = parse(options, argc, argv);
  const auto central = central_address(args);
  pb::CentralRequest request;
  auto* list = request.mutable_list_peers();
  if (args.count("file-id")) list->set_file_id(to_bytes(parse_file_id(args["file-id"].as<std::string>())));
  auto response = ask_central(central, request);
  nlohmann::json json = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& p : response.peer_list().peers()) {
    const std::string id =
        to_hex(std::span(reinterpret_cast<const std::uint8_t*>(p.peer_id().data()), p.peer_id().size()));
    const std::string addr = cli::Address{p.host(), static_cast<std::uint16_t>(p.port())}.to_string();
    const std::string seen =
        cli::rfc3339(std::chrono::system_clock::time_point(std::chrono::milliseconds(p.last_seen_ms())));
    json.push_back({{"peer_id", id}, {"addr", addr}, {"last_seen", seen}});
    rows.push_back({id, addr, seen});
  }
  if (args.count("json")) {
    print_json(json);
  } else {
    print_table({"PEER ID", "ADDRESS", "LAST SEEN"}, rows);
  }
  return 0;
}

}  // namespace p2pshare::cmd
