// p2pshare request-file --file-id ID | --link LINK | --manifest FILE.p2ps [--out PATH] [--stdout] [--sequential]
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <system_error>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/handoff.hpp"
#include "p2pshare/manifest.hpp"

namespace p2pshare::cmd {
namespace {

void draw_progress(const pb::Progress& p) {
  const double fraction = p.size() == 0 ? 1.0 : static_cast<double>(p.have_bytes()) / static_cast<double>(p.size());
  constexpr int kWidth = 30;
  const int filled = static_cast<int>(fraction * kWidth);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::fprintf(stderr, "\r[%s] %5.1f%%  %s / %s  %u peer%s ", bar.c_str(), fraction * 100,
               cli::format_bytes(p.have_bytes()).c_str(), cli::format_bytes(p.size()).c_str(), p.peers(),
               p.peers() == 1 ? "" : "s");
  std::fflush(stderr);
}

// The file the request names: by --file-id, --link or --manifest (exactly
// one). A link or a manifest file also gives the name, the size or the
// hashes, and the central server the peer-server must be using.
FileId target_of(const cxxopts::ParseResult& args, pb::RequestFile& request);

// Sends the request and prints the answer once the download ends.
int wait_for_download(const cxxopts::ParseResult& args, const FileId& id, const pb::ControlRequest& request, bool json);
// --stdout: writes the streamed bytes to stdout as they come.
int stream_to_stdout(const cxxopts::ParseResult& args, const pb::ControlRequest& request);

}  // namespace

int run_request_file(int argc, char** argv) {
  cxxopts::Options options("p2pshare request-file",
                           "Download a file from every peer that has it; prints the finished file's path.");
  // clang-format off
  options.add_options()
      ("file-id", "The file's id (64 hex digits)", cxxopts::value<std::string>())
      ("link", "A p2pshare:// link (share-link) instead of --file-id", cxxopts::value<std::string>())
      ("manifest", "A manifest file (export-manifest) instead of --file-id: every chunk is checked against it",
       cxxopts::value<std::string>())
      ("out", "Where the finished file goes (default: the peer's download dir, under the file's name)",
       cxxopts::value<std::string>())
      ("wait", "While no peer holding the file is live, wait for one instead of failing")
      ("stdout", "Write the file's bytes to stdout, in order, each chunk verified first, while it downloads")
      ("sequential", "Fetch the chunks in order first (the file still goes to disk)");
  // clang-format on
  add_control_options(options);
  auto args = parse(options, argc, argv);
  pb::ControlRequest request;
  const FileId id = target_of(args, *request.mutable_request_file());
  request.mutable_request_file()->set_file_id(to_bytes(id));
  if (args.count("out")) {
    const auto out = std::filesystem::absolute(args["out"].as<std::string>());
    if (!out.has_filename()) throw Error(Errc::usage, "--out must name a file");
    if (std::filesystem::is_directory(out))
      throw Error(Errc::bad_request, fmt::format("--out {} is a directory", out.string()));
    request.mutable_request_file()->set_out_path(out.string());
  }
  request.mutable_request_file()->set_wait_for_holders(args.count("wait") > 0);
  request.mutable_request_file()->set_sequential(args.count("sequential") > 0);
  if (args.count("stdout")) {
    if (args.count("json")) throw Error(Errc::usage, "--stdout and --json both want stdout: give one");
    request.mutable_request_file()->set_stream(true);
    return stream_to_stdout(args, request);
  }
  const bool json = args.count("json") > 0;
  try {
    return wait_for_download(args, id, request, json);
  } catch (const Error& e) {
    // Scripts tell an I/O failure from a missing holder by the code; the
    // line on stderr and exit status 1 stay as for every failure.
    if (json) print_json({{"error", {{"code", errc_name(e.code())}, {"message", e.what()}}}});
    throw;
  }
}

namespace {

handoff::ManifestFile read_manifest_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw Error(Errc::not_found,
                fmt::format("cannot read {}: {}", path, std::error_code(errno, std::generic_category()).message()));
  }
  // Read at most one byte past the largest valid file: a huge file is
  // refused without being held in memory.
  std::string bytes(handoff::kMaxManifestFileSize + 1, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (in.bad()) throw Error(Errc::io, fmt::format("cannot read {}", path));
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  if (bytes.size() > handoff::kMaxManifestFileSize) {
    throw Error(Errc::verification, fmt::format("{}: too large to be a manifest file", path));
  }
  try {
    return handoff::decode_manifest_file(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  } catch (const Error& e) {
    throw Error(e.code(), fmt::format("{}: {}", path, e.what()));
  }
}

FileId target_of(const cxxopts::ParseResult& args, pb::RequestFile& request) {
  const auto given = args.count("file-id") + args.count("link") + args.count("manifest");
  if (given != 1) throw Error(Errc::usage, "give exactly one of --file-id, --link and --manifest");
  if (args.count("file-id")) return parse_file_id(args["file-id"].as<std::string>());
  if (args.count("link")) {
    const auto link = handoff::decode_link(args["link"].as<std::string>());
    request.set_name(link.name);
    request.set_size(link.size);
    request.set_central_addr(link.central);
    request.set_central_fingerprint(std::string(link.central_fingerprint.begin(), link.central_fingerprint.end()));
    return link.file_id;
  }
  const auto file = read_manifest_file(args["manifest"].as<std::string>());
  manifest_to_wire(file.manifest, request.mutable_manifest());
  request.set_name(file.manifest.name);
  request.set_central_addr(file.central);
  request.set_central_fingerprint(std::string(file.central_fingerprint.begin(), file.central_fingerprint.end()));
  return file.manifest.file_id();
}

// False when the reader went away (EPIPE): the stream ends, quietly.
bool write_all(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(STDOUT_FILENO, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EPIPE) return false;
    if (n < 0) throw Error(Errc::io, fmt::format("cannot write to stdout: {}", errno_text(errno)));
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

int stream_to_stdout(const cxxopts::ParseResult& args, const pb::ControlRequest& request) {
  // A reader that closes early (`| head -c N`) is an EPIPE from write(), not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  auto control = connect_control(args);
  control.send(request);
  std::uint64_t written = 0;
  while (true) {
    // Nothing arrives while no holder sends (or the file is verified first).
    auto response = control.receive(std::chrono::minutes(10));
    if (response.has_progress()) continue;
    if (response.has_error()) throw_remote(response.error());
    if (response.has_downloaded()) {
      if (written != response.downloaded().size()) {
        throw Error(Errc::protocol,
                    fmt::format("the stream ended after {} of {} bytes", written, response.downloaded().size()));
      }
      return 0;
    }
    if (!response.has_stream_data()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
    const auto& data = response.stream_data();
    if (data.offset() != written) {
      throw Error(Errc::protocol,
                  fmt::format("stream bytes out of order: offset {}, expected {}", data.offset(), written));
    }
    if (!write_all(data.data())) return 0;
    written += data.data().size();
  }
}

int wait_for_download(const cxxopts::ParseResult& args, const FileId& id, const pb::ControlRequest& request,
                      bool json) {
  auto control = connect_control(args);
  control.send(request);
  const bool bar = ::isatty(STDERR_FILENO) && !json;
  bool drew = false;
  while (true) {
    // Progress comes several times a second while anything happens; a
    // resume check of a very large file may be quiet for a while.
    auto response = control.receive(std::chrono::minutes(10));
    if (response.has_progress()) {
      if (bar) {
        draw_progress(response.progress());
        drew = true;
      }
      continue;
    }
    if (drew) std::fprintf(stderr, "\n");
    if (response.has_error()) throw_remote(response.error());
    if (!response.has_downloaded()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
    const auto& d = response.downloaded();
    if (json) {
      print_json({{"file_id", to_hex(id)},
                  {"path", d.path()},
                  {"size", d.size()},
                  {"bytes_received", d.bytes_received()},
                  {"seconds", d.seconds()}});
    } else {
      std::cout << d.path() << "\n";
    }
    return 0;
  }
}

}  // namespace

}  // namespace p2pshare::cmd
