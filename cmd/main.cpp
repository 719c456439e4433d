// p2pshare <command> [options]: a table from command name to its run function.
#include <google/protobuf/stubs/common.h>

#include <cstring>
#include <iostream>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"

#ifndef P2PSHARE_COMMIT
#define P2PSHARE_COMMIT "unknown"  // CMakeLists.txt sets it at configure time
#endif

namespace p2pshare::cmd {
int run_central_server(int, char**);
int run_peer_server(int, char**);
int run_register_file(int, char**);
int run_request_file(int, char**);
int run_list_files(int, char**);
int run_list_peers(int, char**);
int run_file_info(int, char**);
int run_stop_sharing(int, char**);
int run_status(int, char**);
int run_share_link(int, char**);
int run_export_manifest(int, char**);
int run_create_user(int, char**);
int run_login(int, char**);
int run_logout(int, char**);
int run_whoami(int, char**);
int run_create_group(int, char**);
int run_list_groups(int, char**);
int run_join_group(int, char**);
int run_list_requests(int, char**);
int run_accept_request(int, char**);
int run_reject_request(int, char**);
int run_leave_group(int, char**);

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"central-server", "Run the registry of live peers and the files they share", run_central_server},
      {"peer-server", "Run this machine's peer: serve, download and share files", run_peer_server},
      {"register-file", "Share a file through your peer-server; prints its file id", run_register_file},
      {"request-file", "Download a file by id through your peer-server; prints its path", run_request_file},
      {"list-files", "List every file the central server knows", run_list_files},
      {"list-peers", "List live peers (optionally those holding one file)", run_list_peers},
      {"file-info", "Show a file's size, chunks, holders and copies per chunk", run_file_info},
      {"stop-sharing", "Stop serving and announcing a file", run_stop_sharing},
      {"status", "Show what your peer-server shares and downloads", run_status},
      {"share-link", "Print a p2pshare:// link to a file you share", run_share_link},
      {"export-manifest", "Write a .p2ps manifest file for a file you share", run_export_manifest},
      {"create-user", "Create an account on the central server", run_create_user},
      {"login", "Log your peer-server in as a user", run_login},
      {"logout", "Log your peer-server out", run_logout},
      {"whoami", "Print the user your peer-server is logged in as", run_whoami},
      {"create-group", "Create a group you own", run_create_group},
      {"list-groups", "List every group and whether you are a member", run_list_groups},
      {"join-group", "Ask to join a group", run_join_group},
      {"list-requests", "List the requests to join a group you own", run_list_requests},
      {"accept-request", "Accept a request to join a group you own", run_accept_request},
      {"reject-request", "Reject a request to join a group you own", run_reject_request},
      {"leave-group", "Leave a group", run_leave_group},
  };
  return table;
}

}  // namespace p2pshare::cmd

namespace {

void usage(std::ostream& out) {
  out << "p2pshare " << P2PSHARE_VERSION << ": peer-to-peer file sharing\n\n"
      << "Usage: p2pshare <command> [options]\n\nCommands:\n";
  for (const auto& c : p2pshare::cmd::commands()) out << fmt::format("  {:<16}{}\n", c.name, c.summary);
  out << "\nRun 'p2pshare <command> --help' for a command's options.\n";
}

}  // namespace

int main(int argc, char** argv) {
  GOOGLE_PROTOBUF_VERIFY_VERSION;
  if (argc < 2) {
    usage(std::cerr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    usage(std::cout);
    return 0;
  }
  if (name == "--version") {
    std::cout << "p2pshare " << P2PSHARE_VERSION << " (commit " << P2PSHARE_COMMIT << ")\n";
    return 0;
  }
  for (const auto& command : p2pshare::cmd::commands()) {
    if (name != command.name) continue;
    try {
      // argv[1] becomes the program name cxxopts sees: "register-file --path x".
      return command.run(argc - 1, argv + 1);
    } catch (const p2pshare::Error& e) {
      std::cerr << "p2pshare " << name << ": " << e.what() << "\n";
      return e.code() == p2pshare::Errc::usage ? 2 : 1;
    } catch (const std::exception& e) {
      std::cerr << "p2pshare " << name << ": " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "p2pshare: unknown command '" << name << "' (see 'p2pshare --help')\n";
  return 2;
}
