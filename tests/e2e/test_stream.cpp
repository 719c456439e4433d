// request-file --stdout's two answer forms (docs/protocol.md, "Streams"): the
// command asks for payloads (RequestFile.stream_payloads) and takes each
// piece's bytes as its frame's payload; it still takes the inline form a
// peer-server without the field sends; and every offset, length and size a
// peer-server sends is checked. A real peer-server still answers a client
// that does not ask for payloads (an older command) in the inline form.
//
// The other side of the command is a small control server in this test
// (real TLS, a real cookie and certificate in a data dir, on loopback): it
// answers the Hello, records the request, then sends the frames a test
// gives it, byte for byte.
#include <catch2/catch.hpp>

#include <atomic>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "control.pb.h"
#include "e2e.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/peer_server.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

namespace {

struct ScriptedFrame {
  std::string message;
  std::string payload;
};

std::string stream_piece(std::uint64_t offset, std::string_view data, std::uint64_t size) {
  pb::ControlResponse response;
  response.mutable_stream_data()->set_offset(offset);
  response.mutable_stream_data()->set_data(std::string(data));
  response.mutable_stream_data()->set_size(size);
  return response.SerializeAsString();
}

ScriptedFrame inline_piece(std::uint64_t offset, std::string_view data, std::uint64_t size = 0) {
  return {stream_piece(offset, data, size), {}};
}

ScriptedFrame payload_piece(std::uint64_t offset, std::string_view data, std::uint64_t size, std::uint64_t announced) {
  pb::ControlResponse response;
  response.mutable_stream_data()->set_offset(offset);
  response.mutable_stream_data()->set_length(announced);
  response.mutable_stream_data()->set_size(size);
  return {response.SerializeAsString(), std::string(data)};
}

ScriptedFrame downloaded(std::uint64_t size) {
  pb::ControlResponse response;
  response.mutable_downloaded()->set_size(size);
  return {response.SerializeAsString(), {}};
}

// The fake peer-server's control side: one connection, run on its own thread.
class ScriptedControlServer {
 public:
  ScriptedControlServer(const fs::path& data_dir, std::vector<ScriptedFrame> script)
      : identity_(tls::load_or_create_identity(data_dir, false)),
        context_(tls::make_context(tls::Side::server, &identity_)),
        acceptor_(io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
        script_(std::move(script)) {
    cookie_ = std::string(64, 'a');
    std::ofstream(peer::cookie_path(data_dir)) << cookie_ << "\n";
    addr_ = "127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port());
    acceptor_.async_accept([this](const std::error_code& ec, asio::ip::tcp::socket socket) {
      if (!ec) serve(std::move(socket));
    });
    // Bounded: the thread ends by itself whatever the command does.
    thread_ = std::thread([this] { io_.run_for(std::chrono::seconds(60)); });
  }
  ~ScriptedControlServer() {
    io_.stop();
    thread_.join();
  }
  ScriptedControlServer(const ScriptedControlServer&) = delete;
  ScriptedControlServer& operator=(const ScriptedControlServer&) = delete;

  const std::string& addr() const { return addr_; }
  // The request the command sent (after the command exits).
  pb::RequestFile request() {
    std::lock_guard lock(mutex_);
    return request_;
  }

 private:
  void serve(asio::ip::tcp::socket socket) {
    wire::ConnectionOptions options;
    options.limits = protocol::kControlRequestLimits;
    connection_ = wire::Connection::create(std::move(socket), *context_, tls::Side::server, options);
    connection_->start(
        [this](std::string_view message, std::uint32_t) {
          if (frames_++ == 0) {
            const auto hello = protocol::parse_hello(message);
            pb::ControlResponse answer;
            if (hello.cookie() == cookie_) {
              answer.mutable_done();
            } else {
              *answer.mutable_error() = protocol::make_error(static_cast<int>(Errc::unauthorized), "bad cookie");
            }
            connection_->send(answer.SerializeAsString());
            return;
          }
          pb::ControlRequest request;
          if (request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
            std::lock_guard lock(mutex_);
            request_ = request.request_file();
          }
          for (const auto& frame : script_) {
            auto owner = std::make_shared<std::string>(frame.payload);
            wire::Payload payload{std::span(reinterpret_cast<const std::uint8_t*>(owner->data()), owner->size()),
                                  owner};
            connection_->send(frame.message, std::move(payload));
          }
        },
        [](const std::string&) {});
  }

  tls::Identity identity_;
  asio::io_context io_;
  std::shared_ptr<asio::ssl::context> context_;
  asio::ip::tcp::acceptor acceptor_;
  std::vector<ScriptedFrame> script_;
  std::string cookie_;
  std::string addr_;
  std::shared_ptr<wire::Connection> connection_;
  int frames_ = 0;
  std::mutex mutex_;
  pb::RequestFile request_;
  std::thread thread_;
};

std::string pseudo_random(std::size_t size, std::uint32_t seed) {
  std::string bytes(size, '\0');
  for (auto& b : bytes) {
    seed = seed * 1664525u + 1013904223u;
    b = static_cast<char>(seed >> 24);
  }
  return bytes;
}

RunResult stream_from(const ScriptedControlServer& server, const TempDir& dir) {
  return run({binary(), "request-file", "--peer-addr", server.addr(), "--data-dir", dir.path().string(), "--file-id",
              std::string(64, 'b'), "--stdout"},
             dir.path(), std::chrono::seconds(30));
}

constexpr std::size_t kPiece = protocol::kStreamPieceMax;

}  // namespace

TEST_CASE("request-file --stdout asks for payloads and takes both answer forms", "[e2e]") {
  TempDir dir;
  const std::string file = pseudo_random(2 * kPiece + 12345, 7);
  const std::uint64_t size = file.size();
  std::string_view all(file);

  SECTION("payload form: each piece's bytes are its frame's payload") {
    ScriptedControlServer server(dir.path(),
                                 {payload_piece(0, all.substr(0, kPiece), size, kPiece),
                                  payload_piece(kPiece, all.substr(kPiece, kPiece), size, kPiece),
                                  payload_piece(2 * kPiece, all.substr(2 * kPiece), size, 12345), downloaded(size)});
    const auto r = stream_from(server, dir);
    INFO(describe(r).substr(0, 2000));
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == file);
    CHECK(server.request().stream());
    CHECK(server.request().stream_payloads());
  }
  SECTION("inline form (a peer-server that does not know stream_payloads)") {
    // As such a peer-server sends it: data only, no length, no size.
    ScriptedControlServer server(
        dir.path(), {inline_piece(0, all.substr(0, kPiece)), inline_piece(kPiece, all.substr(kPiece, kPiece)),
                     inline_piece(2 * kPiece, all.substr(2 * kPiece)), downloaded(size)});
    const auto r = stream_from(server, dir);
    INFO(describe(r).substr(0, 2000));
    REQUIRE(r.exit_code == 0);
    CHECK(r.out == file);
    CHECK(server.request().stream_payloads());
  }
}

TEST_CASE("request-file --stdout refuses a stream whose offsets, lengths or size do not add up", "[e2e]") {
  TempDir dir;
  const std::string file = pseudo_random(kPiece + 100, 9);
  const std::uint64_t size = file.size();
  std::string_view all(file);
  std::vector<ScriptedFrame> script;
  std::string says;

  SECTION("a payload that is not the length its message announces") {
    script = {payload_piece(0, all.substr(0, kPiece), size, kPiece - 1)};
    says = "announces";
  }
  SECTION("a piece that does not start where the last one ended") {
    script = {payload_piece(0, all.substr(0, 1000), size, 1000),
              payload_piece(2000, all.substr(2000, 1000), size, 1000)};
    says = "out of order";
  }
  SECTION("pieces that run past the file's size") {
    script = {payload_piece(0, all.substr(0, kPiece), 1000, kPiece)};
    says = "past the file's size";
  }
  SECTION("a size that changes") {
    script = {payload_piece(0, all.substr(0, 1000), size, 1000),
              payload_piece(1000, all.substr(1000, 1000), size + 1, 1000)};
    says = "size";
  }
  SECTION("both inline bytes and a payload") {
    script = {{stream_piece(0, all.substr(0, 10), size), std::string(all.substr(0, 10))}};
    says = "both";
  }
  SECTION("a payload on an answer that is not a stream piece") {
    script = {{downloaded(size).message, "x"}};
    says = "unexpected payload";
  }
  SECTION("an inline piece over the largest piece") {
    script = {inline_piece(0, pseudo_random(kPiece + 1, 3))};
    says = "piece of";
  }
  SECTION("an end before every byte came") {
    script = {payload_piece(0, all.substr(0, kPiece), size, kPiece), downloaded(size)};
    says = "ended after";
  }
  ScriptedControlServer server(dir.path(), script);
  const auto r = stream_from(server, dir);
  INFO(describe(r).substr(0, 2000));
  CHECK(r.exit_code == 1);
  CHECK(lines_of(r.err).size() == 1);
  CHECK(contains_ci(r.err, says));
  CHECK(r.out.size() <= file.size());
}

TEST_CASE("a peer-server answers a stream without stream_payloads in the inline form (older commands)", "[e2e]") {
  Cluster c(1);
  const auto path = c.make_file("old.bin", 3 * kPiece + 77, 411);
  const std::string id = c.register_file(0, path);
  const std::string file = read_file(path);

  auto [host, port] = split(c.peer(0).addr);
  wire::SyncClient client(protocol::kControlLimits);
  client.connect(host, port, std::chrono::seconds(5));
  client.send(protocol::hello(pb::PLANE_CONTROL, {}, token_of(c.peer(0))), std::chrono::seconds(5));
  pb::ControlResponse ack;
  REQUIRE(ack.ParseFromString(client.receive(std::chrono::seconds(10))));
  REQUIRE(ack.has_done());
  pb::ControlRequest request;
  request.mutable_request_file()->set_file_id(to_bytes(*file_id_from_hex(id)));
  request.mutable_request_file()->set_stream(true);
  client.send(request.SerializeAsString(), std::chrono::seconds(5));
  // SyncClient refuses any payload (kControlLimits allows none): every
  // piece must come inline.
  std::string got;
  while (true) {
    pb::ControlResponse response;
    REQUIRE(response.ParseFromString(client.receive(std::chrono::seconds(30))));
    if (response.has_progress()) continue;
    if (response.has_downloaded()) {
      CHECK(response.downloaded().size() == file.size());
      break;
    }
    REQUIRE(response.has_stream_data());
    const auto& data = response.stream_data();
    REQUIRE(data.offset() == got.size());
    REQUIRE(data.data().size() <= kPiece);
    got += data.data();
  }
  CHECK(got == file);
}

TEST_CASE("request-file --stdout refuses a peer-server as every control command does", "[e2e]") {
  TempDir dir;
  SECTION("a key other than the data dir's certificate: nothing is sent") {
    ScriptedControlServer server(dir.path(), {downloaded(0)});
    TempDir other;
    (void)tls::load_or_create_identity(other.path(), false);
    std::ofstream(peer::cookie_path(other.path())) << std::string(64, 'a') << "\n";
    const auto r = run({binary(), "request-file", "--peer-addr", server.addr(), "--data-dir", other.path().string(),
                        "--file-id", std::string(64, 'b'), "--stdout"},
                       dir.path(), std::chrono::seconds(30));
    check_fails("another key", r, 1, {"not authorized", "fingerprint", "--data-dir"});
    CHECK_FALSE(server.request().stream());  // no request reached it
  }
  SECTION("a cookie the peer-server refuses") {
    ScriptedControlServer server(dir.path(), {downloaded(0)});
    std::ofstream(peer::cookie_path(dir.path())) << std::string(64, 'c') << "\n";
    check_fails("wrong cookie", stream_from(server, dir), 1, {"bad cookie"});
    CHECK_FALSE(server.request().stream());
  }
  SECTION("no data dir: the cookie cannot be read") {
    const auto r = run({binary(), "request-file", "--peer-addr", "127.0.0.1:1", "--data-dir",
                        (dir.path() / "none").string(), "--file-id", std::string(64, 'b'), "--stdout"},
                       dir.path(), std::chrono::seconds(30));
    check_fails("no cookie", r, 1, {"control cookie", "--data-dir"});
  }
}
