// p2pshare request-file --file-id ID | --link LINK | --manifest FILE.p2ps [--out PATH] [--stdout] [--sequential]
#include <fcntl.h>
#include <sys/stat.h>
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
#include "p2pshare/protocol.hpp"

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
int stream_to_stdout(const cxxopts::ParseResult& args, pb::ControlRequest request);

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
bool write_all(std::span<const std::uint8_t> bytes) {
  while (!bytes.empty()) {
    const ssize_t n = ::write(STDOUT_FILENO, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EPIPE) return false;
    if (n < 0) throw Error(Errc::io, fmt::format("cannot write to stdout: {}", errno_text(errno)));
    bytes = bytes.subspan(static_cast<std::size_t>(n));
  }
  return true;
}

// A pipe of one stream piece: each piece goes to the reader in one write()
// and one wake-up, not sixteen of the default 64 KiB. Not allowed (over
// /proc/sys/fs/pipe-max-size) or not a pipe: the default stays.
void widen_stdout_pipe() {
  struct stat st {};
  if (::fstat(STDOUT_FILENO, &st) == 0 && S_ISFIFO(st.st_mode)) {
    (void)::fcntl(STDOUT_FILENO, F_SETPIPE_SZ, static_cast<int>(protocol::kStreamPieceMax));
  }
}

// A TCP connection to `peer` on `io`, within `timeout`. Throws Error(unavailable).
asio::ip::tcp::socket connect_socket(asio::io_context& io, const cli::Address& peer,
                                     std::chrono::milliseconds timeout) {
  asio::ip::tcp::resolver resolver(io);
  asio::ip::tcp::socket socket(io);
  std::error_code result = asio::error::would_block;
  resolver.async_resolve(peer.host, std::to_string(peer.port), [&](const std::error_code& ec, const auto& endpoints) {
    if (ec) {
      result = ec;
      return;
    }
    asio::async_connect(socket, endpoints, [&](const std::error_code& e, const auto&) { result = e; });
  });
  io.run_for(timeout);
  if (!io.stopped()) {
    resolver.cancel();
    std::error_code ignored;
    socket.close(ignored);
    io.run();  // the cancelled operations finish
    result = asio::error::timed_out;
  }
  io.restart();
  if (result) throw Error(Errc::unavailable, fmt::format("cannot reach {}: {}", peer.to_string(), result.message()));
  wire::tune_socket(socket);
  return socket;
}

// The --stdout side of the control connection: a wire::Connection on the
// command's own io_context, so each piece's payload is decrypted straight
// into one 1 MiB buffer and goes to stdout in one write() (no protobuf
// string, no frame decoder copy). The write blocks the only thread: nothing
// more is read from the socket meanwhile, which is the backpressure a
// stalled reader puts on the peer-server. Every offset, length and size the
// peer-server sends is checked before use.
class StdoutStream {
 public:
  StdoutStream(asio::io_context& io, cli::Address peer, ControlCredentials credentials, pb::ControlRequest request)
      : io_(io), peer_(std::move(peer)), credentials_(std::move(credentials)), request_(std::move(request)) {
    // A link's size, or a manifest file's: the stream must agree with it.
    if (request_.request_file().has_size()) size_ = request_.request_file().size();
    if (request_.request_file().has_manifest()) size_ = request_.request_file().manifest().size();
  }

  int run() {
    wire::ConnectionOptions options;
    options.limits = protocol::kControlStreamLimits;
    options.timeouts.first_frame = std::chrono::seconds(10);  // the handshake and the Hello's answer
    // Nothing arrives while no holder sends (or the file is verified first).
    options.timeouts.idle = std::chrono::minutes(10);
    const auto context = tls::make_context(tls::Side::client, nullptr);
    auto socket = connect_socket(io_, peer_, std::chrono::seconds(5));
    // A fixed receive buffer (the kernel doubles it for its bookkeeping),
    // not one autotuned up to net.ipv4.tcp_rmem's maximum (32 MiB here):
    // while the reader stalls, what waits in the kernel for this command
    // stays about one piece, so the peer-server's read-ahead window, not a
    // sysctl, bounds how far the download runs ahead of the reader.
    std::error_code ignored;
    socket.set_option(asio::socket_base::receive_buffer_size(static_cast<int>(protocol::kStreamPieceMax)), ignored);
    connection_ = wire::Connection::create(std::move(socket), *context, tls::Side::client, options);
    connection_->set_verify([this](const wire::Connection& c) -> std::string {
      if (!c.peer_key()) {
        refusal_ = Error(Errc::protocol, fmt::format("{} presented no certificate", peer_.to_string()));
        return "no certificate";
      }
      if (auto refused = refuse_control_key(peer_, credentials_, *c.peer_key())) {
        refusal_ = Error(Errc::unauthorized, *refused);
        return *refused;
      }
      return {};
    });
    connection_->start([this](std::string_view message,
                              std::uint32_t payload_length) { guarded([&] { on_frame(message, payload_length); }); },
                       [this](const std::string& reason) { on_close(reason); });
    connection_->send(protocol::hello(pb::PLANE_CONTROL, {}, credentials_.cookie));
    io_.run();
    // What close() posted, and the operations it aborted, finish here.
    connection_->close("done");
    connection_.reset();
    io_.restart();
    io_.run_for(std::chrono::seconds(1));
    if (failure_) std::rethrow_exception(failure_);
    return exit_code_.value_or(1);
  }

 private:
  template <typename F>
  void guarded(F&& body) {
    try {
      body();
    } catch (...) {
      failure_ = std::current_exception();
      stop();
    }
  }

  void stop() {
    ended_ = true;
    if (connection_) connection_->close("done");
    io_.stop();
  }

  void on_close(const std::string& reason) {
    if (ended_) return;
    ended_ = true;
    if (refusal_) {
      failure_ = std::make_exception_ptr(*refusal_);
    } else if (!accepted_) {
      failure_ = std::make_exception_ptr(
          Error(Errc::unavailable, fmt::format("cannot reach {}: {}", peer_.to_string(), reason)));
    } else {
      failure_ = std::make_exception_ptr(
          Error(Errc::unavailable, fmt::format("lost connection to {}: {}", peer_.to_string(), reason)));
    }
    io_.stop();
  }

  void on_frame(std::string_view message, std::uint32_t payload_length) {
    pb::ControlResponse response;
    if (!response.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
      throw Error(Errc::protocol, "malformed answer from the peer-server");
    }
    if (payload_length > 0 && !response.has_stream_data()) {
      throw Error(Errc::protocol, "unexpected payload from the peer-server");
    }
    if (response.has_error()) throw_remote(response.error());
    if (!accepted_) {  // the Hello's answer
      accepted_ = true;
      connection_->send(request_.SerializeAsString());
      return;
    }
    if (response.has_progress()) return;
    if (response.has_downloaded()) {
      if (written_ != response.downloaded().size()) {
        throw Error(Errc::protocol,
                    fmt::format("the stream ended after {} of {} bytes", written_, response.downloaded().size()));
      }
      return finish(0);
    }
    if (!response.has_stream_data()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
    const auto& data = response.stream_data();
    const std::uint64_t length = piece_length(data, payload_length);
    if (payload_length == 0)
      return deliver(std::span(reinterpret_cast<const std::uint8_t*>(data.data().data()), length));
    connection_->read_payload(std::span(piece_.data(), length),
                              [this, length] { guarded([&] { deliver(std::span(piece_.data(), length)); }); });
  }

  // The piece's length, once it is known to fit: it starts where the last
  // one ended, says its length once, is at most kStreamPieceMax and stays
  // within the file's size.
  std::uint64_t piece_length(const pb::StreamData& data, std::uint32_t payload_length) {
    if (data.offset() != written_) {
      throw Error(Errc::protocol,
                  fmt::format("stream bytes out of order: offset {}, expected {}", data.offset(), written_));
    }
    if (data.size() != 0) {
      if (size_ && *size_ != data.size()) {
        throw Error(Errc::protocol, fmt::format("the stream's size is {}, not {}", data.size(), *size_));
      }
      size_ = data.size();
    }
    std::uint64_t length = 0;
    if (payload_length > 0) {  // payload form
      if (!data.data().empty()) throw Error(Errc::protocol, "a stream piece has both inline bytes and a payload");
      if (data.length() != payload_length) {
        throw Error(Errc::protocol,
                    fmt::format("a stream piece announces {} bytes and carries {}", data.length(), payload_length));
      }
      length = payload_length;
    } else {  // inline form
      length = data.data().size();
      if (data.length() != 0 && data.length() != length) {
        throw Error(Errc::protocol,
                    fmt::format("a stream piece announces {} bytes and carries {}", data.length(), length));
      }
    }
    if (length == 0 || length > protocol::kStreamPieceMax) {
      throw Error(Errc::protocol, fmt::format("a stream piece of {} bytes", length));
    }
    if (size_ && length > *size_ - std::min(*size_, written_)) {
      throw Error(Errc::protocol, fmt::format("the stream runs past the file's size of {} bytes", *size_));
    }
    return length;
  }

  void deliver(std::span<const std::uint8_t> bytes) {
    if (!write_all(bytes)) return finish(0);  // the reader left
    written_ += bytes.size();
  }

  void finish(int code) {
    exit_code_ = code;
    stop();
  }

  asio::io_context& io_;
  cli::Address peer_;
  ControlCredentials credentials_;
  pb::ControlRequest request_;
  std::shared_ptr<wire::Connection> connection_;
  std::vector<std::uint8_t> piece_ = std::vector<std::uint8_t>(protocol::kStreamPieceMax);
  std::optional<std::uint64_t> size_;  // the file's, once known (link, manifest, or the peer-server)
  std::uint64_t written_ = 0;
  bool accepted_ = false;  // the Hello was answered
  bool ended_ = false;
  std::optional<Error> refusal_;
  std::exception_ptr failure_;
  std::optional<int> exit_code_;
};

int stream_to_stdout(const cxxopts::ParseResult& args, pb::ControlRequest request) {
  // A reader that closes early (`| head -c N`) is an EPIPE from write(), not a signal.
  std::signal(SIGPIPE, SIG_IGN);
  widen_stdout_pipe();
  auto peer = cli::parse_address(args["peer-addr"].as<std::string>());
  auto credentials = read_control_credentials(std::filesystem::path(args["data-dir"].as<std::string>()));
  request.mutable_request_file()->set_stream_payloads(true);
  asio::io_context io;
  StdoutStream stream(io, std::move(peer), std::move(credentials), std::move(request));
  return stream.run();
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
