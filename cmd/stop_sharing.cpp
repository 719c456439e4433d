// p2pshare stop-sharing --file-id ID
#include "command.hpp"
#include "p2pshare/error.hpp"

namespace p2pshare::cmd {

int run_stop_sharing(int argc, char** argv) {
  cxxopts::Options options("p2pshare stop-sharing", "Your peer-server stops serving and announcing a file.");
  options.add_options()("file-id", "The file's id (64 hex digits)", cxxopts::value<std::string>());
  add_control_options(options);
  auto args = parse(options, argc, argv, {"file-id"});
  const FileId id = parse_file_id(args["file-id"].as<std::string>());
  auto control = connect_control(args);
  pb::ControlRequest request;
  request.mutable_stop_sharing()->set_file_id(to_bytes(id));
  control.send(request);
  auto response = control.receive();
  if (response.has_error()) throw_remote(response.error());
  if (args.count("json")) print_json({{"file_id", to_hex(id)}, {"stopped", true}});
  return 0;
}

}  // namespace p2pshare::cmd
