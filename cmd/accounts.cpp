// p2pshare create-user, login, logout, whoami, create-group, list-groups,
// join-group, list-requests, accept-request, reject-request, leave-group,
// and list-files --group: all through your own peer-server, which holds the
// session and asks the central server as that user.
#include <termios.h>
#include <unistd.h>

#include <iostream>
#include <string>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"

namespace p2pshare::cmd {
namespace {

// One line from stdin (--password-stdin), or a prompt on the terminal with
// echo off. Never a flag: a flag is visible in ps and in shell history.
std::string read_password(const cxxopts::ParseResult& args, const char* prompt) {
  std::string password;
  if (args.count("password-stdin")) {
    if (!std::getline(std::cin, password)) throw Error(Errc::usage, "--password-stdin: no line on standard input");
    if (!password.empty() && password.back() == '\r') password.pop_back();
    return password;
  }
  if (::isatty(STDIN_FILENO) == 0) {
    throw Error(Errc::usage, "no terminal to ask for the password on: pass it on standard input with --password-stdin");
  }
  std::cerr << prompt << std::flush;
  termios saved{};
  ::tcgetattr(STDIN_FILENO, &saved);
  termios quiet = saved;
  quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  ::tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  const bool got = static_cast<bool>(std::getline(std::cin, password));
  ::tcsetattr(STDIN_FILENO, TCSANOW, &saved);
  std::cerr << "\n";
  if (!got) throw Error(Errc::usage, "no password given");
  return password;
}

pb::ControlResponse ask(const cxxopts::ParseResult& args, const pb::ControlRequest& request) {
  auto control = connect_control(args);
  control.send(request);
  // Creating a user or logging in hashes with Argon2id at the central server.
  auto response = control.receive(std::chrono::seconds(60));
  if (response.has_error()) throw_remote(response.error());
  return response;
}

void add_user_option(cxxopts::Options& options) {
  options.add_options()("user", "The user name", cxxopts::value<std::string>());
}
void add_group_option(cxxopts::Options& options) {
  options.add_options()("group", "The group name", cxxopts::value<std::string>());
}
void add_password_option(cxxopts::Options& options) {
  options.add_options()("password-stdin", "Read the password from the first line of standard input");
}

// Prints `text`, or {"ok": true, ...} with --json.
void done(const cxxopts::ParseResult& args, const std::string& text, nlohmann::json json = nlohmann::json::object()) {
  if (args.count("json")) {
    json["ok"] = true;
    print_json(json);
  } else {
    std::cout << text << "\n";
  }
}

}  // namespace

int run_create_user(int argc, char** argv) {
  cxxopts::Options options("p2pshare create-user", "Create an account on the central server.");
  add_user_option(options);
  add_password_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"user"});
  const auto user = args["user"].as<std::string>();
  std::string password = read_password(args, "new password: ");
  if (!args.count("password-stdin")) {
    if (read_password(args, "again: ") != password) throw Error(Errc::bad_request, "the passwords differ");
  }
  pb::ControlRequest request;
  request.mutable_create_user()->set_user(user);
  request.mutable_create_user()->set_password(password);
  ask(args, request);
  done(args, fmt::format("created user {}", user), {{"user", user}});
  return 0;
}

int run_login(int argc, char** argv) {
  cxxopts::Options options("p2pshare login", "Log your peer-server in as a user (the session survives its restart).");
  add_user_option(options);
  add_password_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"user"});
  pb::ControlRequest request;
  request.mutable_login()->set_user(args["user"].as<std::string>());
  request.mutable_login()->set_password(read_password(args, "password: "));
  const auto response = ask(args, request);
  done(args, fmt::format("logged in as {}", response.account().user()), {{"user", response.account().user()}});
  return 0;
}

int run_logout(int argc, char** argv) {
  cxxopts::Options options("p2pshare logout", "End your peer-server's session, here and at the central server.");
  add_control_options(options);
  auto args = parse(options, argc, argv);
  pb::ControlRequest request;
  request.mutable_logout();
  ask(args, request);
  done(args, "logged out");
  return 0;
}

int run_whoami(int argc, char** argv) {
  cxxopts::Options options("p2pshare whoami", "Print the user your peer-server is logged in as.");
  add_control_options(options);
  auto args = parse(options, argc, argv);
  pb::ControlRequest request;
  request.mutable_whoami();
  const auto response = ask(args, request);
  done(args, response.account().user(), {{"user", response.account().user()}});
  return 0;
}

int run_create_group(int argc, char** argv) {
  cxxopts::Options options("p2pshare create-group", "Create a group; you are its owner and first member.");
  add_group_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group"});
  pb::ControlRequest request;
  request.mutable_create_group()->set_group(args["group"].as<std::string>());
  ask(args, request);
  done(args, fmt::format("created group {}", args["group"].as<std::string>()));
  return 0;
}

int run_list_groups(int argc, char** argv) {
  cxxopts::Options options("p2pshare list-groups", "Every group, its owner, members, and whether you are one.");
  add_control_options(options);
  auto args = parse(options, argc, argv);
  pb::ControlRequest request;
  request.mutable_list_groups();
  const auto response = ask(args, request);
  nlohmann::json json = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& g : response.group_list().groups()) {
    const std::string you = g.member() ? "member" : g.pending() ? "asked" : "-";
    json.push_back({{"group", g.name()},
                    {"owner", g.owner()},
                    {"members", g.members()},
                    {"member", g.member()},
                    {"pending", g.pending()}});
    rows.push_back({g.name(), g.owner(), std::to_string(g.members()), you});
  }
  if (args.count("json")) {
    print_json(json);
  } else {
    print_table({"GROUP", "OWNER", "MEMBERS", "YOU"}, rows);
  }
  return 0;
}

int run_join_group(int argc, char** argv) {
  cxxopts::Options options("p2pshare join-group", "Ask to join a group; its owner decides.");
  add_group_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group"});
  pb::ControlRequest request;
  request.mutable_join_group()->set_group(args["group"].as<std::string>());
  ask(args, request);
  done(args, fmt::format("asked to join {}; its owner decides", args["group"].as<std::string>()));
  return 0;
}

int run_list_requests(int argc, char** argv) {
  cxxopts::Options options("p2pshare list-requests", "Users waiting to join a group you own.");
  add_group_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group"});
  pb::ControlRequest request;
  request.mutable_list_requests()->set_group(args["group"].as<std::string>());
  const auto response = ask(args, request);
  nlohmann::json json = nlohmann::json::array();
  for (const auto& user : response.user_list().users()) {
    json.push_back(user);
    if (!args.count("json")) std::cout << user << "\n";
  }
  if (args.count("json")) print_json(json);
  return 0;
}

namespace {
int decide(int argc, char** argv, bool accept) {
  cxxopts::Options options(accept ? "p2pshare accept-request" : "p2pshare reject-request",
                           accept ? "Let a user who asked into a group you own." : "Turn down a user's request.");
  add_group_option(options);
  add_user_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group", "user"});
  pb::ControlRequest request;
  auto* body = accept ? request.mutable_accept_request() : request.mutable_reject_request();
  body->set_group(args["group"].as<std::string>());
  body->set_user(args["user"].as<std::string>());
  ask(args, request);
  done(args, fmt::format("{} {} {} {}", accept ? "accepted" : "rejected", args["user"].as<std::string>(),
                         accept ? "into" : "for", args["group"].as<std::string>()));
  return 0;
}
}  // namespace

int run_accept_request(int argc, char** argv) {
  return decide(argc, argv, true);
}

int run_reject_request(int argc, char** argv) {
  return decide(argc, argv, false);
}

int run_leave_group(int argc, char** argv) {
  cxxopts::Options options("p2pshare leave-group",
                           "Leave a group; an owner's group passes to its oldest member, or goes when empty.");
  add_group_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group"});
  pb::ControlRequest request;
  request.mutable_leave_group()->set_group(args["group"].as<std::string>());
  ask(args, request);
  done(args, fmt::format("left {}", args["group"].as<std::string>()));
  return 0;
}

// list-files --group NAME: through the peer-server, as its user.
int run_list_group_files(int argc, char** argv) {
  cxxopts::Options options("p2pshare list-files --group", "A group's files (members only), through your peer-server.");
  add_group_option(options);
  add_control_options(options);
  auto args = parse(options, argc, argv, {"group"});
  nlohmann::json json = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  std::string after;
  for (int pages = 0; pages < 100000; ++pages) {
    const std::string previous = after;
    pb::ControlRequest request;
    request.mutable_list_files()->set_group(args["group"].as<std::string>());
    request.mutable_list_files()->set_after_file_id(after);
    request.mutable_list_files()->set_limit(1000);
    const auto response = ask(args, request);
    for (const auto& f : response.file_list().files()) {
      const std::string id =
          to_hex(std::span(reinterpret_cast<const std::uint8_t*>(f.file_id().data()), f.file_id().size()));
      json.push_back({{"file_id", id}, {"name", f.name()}, {"size", f.size()}, {"holders", f.holders()}});
      rows.push_back({id, f.name(), cli::format_bytes(f.size()), std::to_string(f.holders())});
      after = f.file_id();
    }
    if (!response.file_list().resume_after().empty()) after = response.file_list().resume_after();
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
