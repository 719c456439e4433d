// p2pshare list-files
#include <iostream>

#include "command.hpp"

namespace p2pshare::cmd {

int run_list_group_files(int argc, char** argv);

int run_list_files(int argc, char** argv) {
  // With --group the list comes through your peer-server, as its user.
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    if (arg == "--group" || arg.starts_with("--group=")) return run_list_group_files(argc, argv);
  }
  cxxopts::Options options("p2pshare list-files", "Every file the central server knows, with its live holders.");
  add_central_options(options);
  auto args = parse(options, argc, argv);
  const auto central = central_address(args);
  nlohmann::json json = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  std::string after;
  // The server answers in pages: a registry of 100,000 files is many frames.
  while (true) {
    const std::string previous = after;
    pb::CentralRequest request;
    request.mutable_list_files()->set_after_file_id(after);
    request.mutable_list_files()->set_limit(1000);
    auto response = ask_central(central, request);
    for (const auto& f : response.file_list().files()) {
      const std::string id =
          to_hex(std::span(reinterpret_cast<const std::uint8_t*>(f.file_id().data()), f.file_id().size()));
      json.push_back({{"file_id", id}, {"name", f.name()}, {"size", f.size()}, {"holders", f.holders()}});
      rows.push_back({id, f.name(), cli::format_bytes(f.size()), std::to_string(f.holders())});
      after = f.file_id();
    }
    if (!response.file_list().resume_after().empty()) after = response.file_list().resume_after();
    // A server that says "more" must move on, or this would never end.
    if (!response.file_list().more() || after == previous) break;
  }
  if (args.count("json")) {
    print_json(json);
  } else {
    print_table({"FILE ID", "NAME", "SIZE", "HOLDERS"}, rows);
  }
  return 0;
}

}  // namespace p2pshare::cmd
