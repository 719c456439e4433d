// p2pshare share-link --file-id ID
#include <iostream>

#include "handoff.hpp"

namespace p2pshare::cmd {

int run_share_link(int argc, char** argv) {
  cxxopts::Options options("p2pshare share-link",
                           "Print a p2pshare:// link to a file your peer-server shares: whoever gets it can "
                           "'request-file --link' it.");
  options.add_options()("file-id", "The file's id (64 hex digits)", cxxopts::value<std::string>());
  add_control_options(options);
  auto args = parse(options, argc, argv, {"file-id"});
  const FileId id = parse_file_id(args["file-id"].as<std::string>());
  const auto described = describe_file(args, id);
  handoff::ShareLink link{id, described.manifest.name, described.manifest.size, described.central,
                          described.central_fingerprint};
  const std::string text = handoff::encode_link(link);
  if (args.count("json")) {
    print_json({{"link", text},
                {"file_id", to_hex(id)},
                {"name", link.name},
                {"size", link.size},
                {"central", link.central},
                {"central_fingerprint", to_hex(std::span<const std::uint8_t>(link.central_fingerprint))}});
  } else {
    std::cout << text << "\n";
  }
  return 0;
}

}  // namespace p2pshare::cmd
