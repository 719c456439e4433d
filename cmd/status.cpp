// p2pshare status
#include <iostream>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::cmd {
namespace {
std::string hex(const std::string& raw) {
  return to_hex(std::span(reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size()));
}
}  // namespace

int run_status(int argc, char** argv) {
  cxxopts::Options options("p2pshare status", "What your peer-server shares, and each download with its progress.");
  add_control_options(options);
  auto args = parse(options, argc, argv);
  auto control = connect_control(args);
  pb::ControlRequest request;
  request.mutable_status();
  control.send(request);
  auto response = control.receive();
  if (response.has_error()) throw_remote(response.error());
  if (!response.has_status()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
  const auto& s = response.status();
  if (args.count("json")) {
    nlohmann::json shared = nlohmann::json::array();
    for (const auto& f : s.shared()) {
      shared.push_back({{"file_id", hex(f.file_id())},
                        {"name", f.name()},
                        {"path", f.path()},
                        {"size", f.size()},
                        {"uploaded", f.uploaded()},
                        {"folder", f.folder()}});
    }
    nlohmann::json folders = nlohmann::json::array();
    for (const auto& f : s.folders()) {
      folders.push_back({{"path", f.path()},
                         {"files", f.files()},
                         {"pending", f.pending()},
                         {"skipped", f.skipped()},
                         {"hashed", f.hashed()},
                         {"reused", f.reused()}});
    }
    nlohmann::json downloads = nlohmann::json::array();
    for (const auto& d : s.downloads()) {
      downloads.push_back({{"file_id", hex(d.file_id())},
                           {"name", d.name()},
                           {"path", d.path()},
                           {"size", d.size()},
                           {"have_bytes", d.have_bytes()},
                           {"peers", d.peers()},
                           {"state", d.state()},
                           {"bytes_received", d.bytes_received()}});
    }
    print_json({{"peer_id", hex(s.peer_id())},
                {"addr", s.listen_addr()},
                {"central_connected", s.central_connected()},
                {"central_addr", s.central_addr()},
                {"user", s.user()},
                {"shared", shared},
                {"downloads", downloads},
                {"folders", folders}});
    return 0;
  }
  std::cout << fmt::format("peer {} on {}, central server {} {}\n\n", hex(s.peer_id()), s.listen_addr(),
                           store::display_name(s.central_addr()),
                           s.central_connected() ? "connected" : "NOT connected");
  std::cout << fmt::format("logged in as: {}\n\n", s.user().empty() ? "nobody" : s.user());
  std::vector<std::vector<std::string>> rows;
  for (const auto& f : s.shared()) {
    rows.push_back(
        {hex(f.file_id()), f.name(), cli::format_bytes(f.size()), "100%", "seeding", cli::format_bytes(f.uploaded())});
  }
  for (const auto& d : s.downloads()) {
    const double pct =
        d.size() == 0 ? 100.0 : 100.0 * static_cast<double>(d.have_bytes()) / static_cast<double>(d.size());
    rows.push_back({hex(d.file_id()), d.name(), cli::format_bytes(d.size()), fmt::format("{:.1f}%", pct),
                    fmt::format("{} ({} peers)", d.state(), d.peers()), "-"});
  }
  print_table({"FILE ID", "NAME", "SIZE", "DONE", "STATE", "UPLOADED"}, rows);
  for (const auto& f : s.folders()) {
    std::cout << fmt::format(
        "\nshare-dir {}: {} files shared, {} waiting or hashing, {} skipped ({} hashed, {} "
        "unchanged since the last run)\n",
        f.path(), f.files(), f.pending(), f.skipped(), f.hashed(), f.reused());
  }
  return 0;
}

}  // namespace p2pshare::cmd
