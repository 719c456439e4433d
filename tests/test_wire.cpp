// Framing: the header codec, the incremental decoder, Connection over real
// loopback sockets, and the blocking SyncClient.
#include <catch2/catch.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <asio.hpp>

#include "p2pshare/error.hpp"
#include "p2pshare/wire.hpp"
#include "support/build_kind.hpp"
#include "support/temp_dir.hpp"
#include "support/tls_client.hpp"

using namespace std::chrono_literals;
using asio::ip::tcp;
using p2pshare::Errc;
using p2pshare::Error;
using p2pshare::test::kTimingAsserted;
using p2pshare::test::wait_for;
namespace wire = p2pshare::wire;
using Clock = std::chrono::steady_clock;

namespace {

std::string frame_bytes(std::string_view message, std::string_view payload = {}) {
  const auto header =
      wire::encode_header({static_cast<std::uint32_t>(message.size()), static_cast<std::uint32_t>(payload.size())});
  std::string out(reinterpret_cast<const char*>(header.data()), header.size());
  out.append(message);
  out.append(payload);
  return out;
}

std::string raw_header(std::uint32_t message_length, std::uint32_t payload_length) {
  const auto header = wire::encode_header({message_length, payload_length});
  return std::string(reinterpret_cast<const char*>(header.data()), header.size());
}

std::span<const std::uint8_t> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Runs `io` in short slices until `done` holds or `timeout` passes. `tick`
// runs between slices (a test's raw client acts there).
bool pump(asio::io_context& io, const std::function<bool()>& done, std::chrono::milliseconds timeout,
          const std::function<void()>& tick = {}) {
  return wait_for(
      [&] {
        if (tick) tick();
        if (io.stopped()) io.restart();
        io.run_for(2ms);
        return done();
      },
      timeout);
}

// Every Connection runs over TLS: one key pair for the servers of this file.
const p2pshare::tls::Identity& test_identity() {
  static const auto identity = p2pshare::tls::make_identity();
  return identity;
}
asio::ssl::context& server_tls() {
  static const auto context = p2pshare::tls::make_context(p2pshare::tls::Side::server, &test_identity());
  return *context;
}
asio::ssl::context& client_tls() {
  static const auto context = p2pshare::tls::make_context(p2pshare::tls::Side::client, nullptr);
  return *context;
}
std::shared_ptr<wire::Connection> make_server(tcp::socket socket, const wire::ConnectionOptions& options) {
  return wire::Connection::create(std::move(socket), server_tls(), p2pshare::tls::Side::server, options);
}
std::shared_ptr<wire::Connection> make_client(tcp::socket socket, const wire::ConnectionOptions& options) {
  return wire::Connection::create(std::move(socket), client_tls(), p2pshare::tls::Side::client, options);
}

// A test's hand-driven client: a raw socket and its TLS, handshaken on first
// use while the test's io_context runs the server side.
struct RawClient {
  asio::io_context* io;
  tcp::socket socket;
  std::unique_ptr<p2pshare::test::TlsStream> tls;
};

// A listening socket on 127.0.0.1 and helpers to make connected pairs.
struct Loopback {
  asio::io_context io;
  tcp::acceptor acceptor{io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};

  std::uint16_t port() const { return acceptor.local_endpoint().port(); }

  // Two connected sockets: the client's and the server's.
  std::pair<tcp::socket, tcp::socket> socket_pair() {
    tcp::socket client(io);
    client.connect(acceptor.local_endpoint());
    tcp::socket server = acceptor.accept();
    return {std::move(client), std::move(server)};
  }
  // A raw (blocking) TLS client and the server side of the connection.
  std::pair<RawClient, tcp::socket> pair() {
    auto [client, server] = socket_pair();
    const int fd = client.native_handle();
    return {RawClient{&io, std::move(client),
                      std::make_unique<p2pshare::test::TlsStream>(fd, p2pshare::tls::Side::client, nullptr)},
            std::move(server)};
  }
};

// Completes the client's handshake, running the server side meanwhile.
void ensure_handshake(RawClient& client) {
  const bool done = wait_for(
      [&] {
        if (client.io->stopped()) client.io->restart();
        client.io->run_for(2ms);
        return client.tls->step();
      },
      3s);
  if (!done) throw std::runtime_error("the test client's TLS handshake did not finish");
}

// Sends `data` as plaintext inside TLS.
void write_raw(RawClient& client, std::string_view data) {
  if (!client.tls->done()) ensure_handshake(client);
  const std::string sealed = client.tls->seal(data);
  asio::write(client.socket, asio::buffer(sealed));
}

// Reads whatever the raw socket has without blocking (decrypted); true once
// the peer has closed (EOF or reset).
bool drain_raw(RawClient& client, std::string* into) {
  if (!client.tls->done()) {
    try {
      if (!client.tls->step()) return false;
    } catch (const std::runtime_error&) {
      return true;
    }
  }
  client.socket.non_blocking(true);
  std::array<char, 65536> buf{};
  while (true) {
    std::error_code ec;
    const std::size_t n = client.socket.read_some(asio::buffer(buf), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return false;
    if (ec) return true;
    const std::string plain = client.tls->open(std::string_view(buf.data(), n));
    if (into) into->append(plain);
  }
}

// The server end of a SyncClient test: accepts one connection and
// handshakes on its own thread (the SyncClient blocks in connect meanwhile).
class RawServer {
 public:
  explicit RawServer(Loopback& net) {
    thread_ = std::thread([this, &net] {
      try {
        socket_ = std::make_unique<tcp::socket>(net.acceptor.accept());
        tls_ = std::make_unique<p2pshare::test::TlsStream>(socket_->native_handle(), p2pshare::tls::Side::server,
                                                           &test_identity());
        tls_->handshake(3s);
      } catch (const std::exception& e) {
        error_ = e.what();
      }
    });
  }
  ~RawServer() { join(); }
  RawServer(const RawServer&) = delete;
  RawServer& operator=(const RawServer&) = delete;
  // Waits for the accept and the handshake.
  p2pshare::test::TlsStream& ready() {
    join();
    if (!error_.empty()) throw std::runtime_error(error_);
    return *tls_;
  }
  tcp::socket& socket() { return *socket_; }

 private:
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  std::thread thread_;
  std::unique_ptr<tcp::socket> socket_;
  std::unique_ptr<p2pshare::test::TlsStream> tls_;
  std::string error_;
};

// What a test's server-side Connection saw.
struct Recorder {
  struct Got {
    std::string message;
    std::uint32_t payload_length = 0;
    std::string payload;
  };
  std::vector<Got> frames;
  std::optional<std::string> closed;
  Clock::time_point closed_at;
  Clock::time_point last_frame_at;
  bool read_payloads = true;
  // Owned payload buffers (stable addresses while a read is pending).
  std::vector<std::unique_ptr<std::vector<std::uint8_t>>> buffers;

  void start(const std::shared_ptr<wire::Connection>& conn) {
    wire::Connection* raw = conn.get();  // no shared_ptr in our own handlers: no cycle
    conn->start(
        [this, raw](std::string_view message, std::uint32_t payload_length) {
          frames.push_back({std::string(message), payload_length, {}});
          last_frame_at = Clock::now();
          if (payload_length > 0 && read_payloads) {
            buffers.push_back(std::make_unique<std::vector<std::uint8_t>>(payload_length));
            auto* buffer = buffers.back().get();
            const std::size_t index = frames.size() - 1;
            raw->read_payload(*buffer,
                              [this, buffer, index] { frames[index].payload.assign(buffer->begin(), buffer->end()); });
          }
        },
        [this](const std::string& reason) {
          closed = reason;
          closed_at = Clock::now();
        });
  }
};

wire::ConnectionOptions options_with(std::chrono::milliseconds first_frame, std::chrono::milliseconds idle,
                                     std::chrono::milliseconds frame) {
  wire::ConnectionOptions options;
  options.limits.max_message = 4096;
  options.limits.max_payload = 1 << 20;
  options.timeouts.first_frame = first_frame;
  options.timeouts.idle = idle;
  options.timeouts.frame = frame;
  return options;
}

// A payload whose bytes a shared string owns until the write completes.
wire::Payload as_payload(const std::shared_ptr<std::string>& p) {
  return wire::Payload{std::span(reinterpret_cast<const std::uint8_t*>(p->data()), p->size()), p};
}

// Two Connections over loopback, both started, each recording what it gets.
struct ConnectedPair {
  ConnectedPair(Loopback& net, const wire::ConnectionOptions& options) {
    auto [client_socket, server_socket] = net.socket_pair();
    server = make_server(std::move(server_socket), options);
    client = make_client(std::move(client_socket), options);
    server_rec.start(server);
    client_rec.start(client);
  }
  ConnectedPair(const ConnectedPair&) = delete;  // the recorders' handlers hold their addresses
  ConnectedPair& operator=(const ConnectedPair&) = delete;
  ~ConnectedPair() {
    client->close("done");
    server->close("done");
  }

  std::shared_ptr<wire::Connection> server;
  std::shared_ptr<wire::Connection> client;
  Recorder server_rec;
  Recorder client_rec;
};

}  // namespace

// --- header codec --------------------------------------------------------------

TEST_CASE("encode_header writes both lengths big-endian", "[wire]") {
  const auto bytes = wire::encode_header({0x01020304u, 0xa0b0c0d0u});
  const std::array<std::uint8_t, 8> expected{0x01, 0x02, 0x03, 0x04, 0xa0, 0xb0, 0xc0, 0xd0};
  CHECK(bytes == expected);

  const auto small = wire::encode_header({5, 256});
  const std::array<std::uint8_t, 8> expected_small{0, 0, 0, 5, 0, 0, 1, 0};
  CHECK(small == expected_small);
}

TEST_CASE("decode_header round-trips encode_header", "[wire]") {
  wire::Limits wide{0xffffffffu, 0xffffffffu};
  for (auto [m, p] : std::vector<std::pair<std::uint32_t, std::uint32_t>>{
           {1, 0}, {0x01020304u, 0xa0b0c0d0u}, {0xffffffffu, 0xffffffffu}, {255, 256}, {65536, 1}}) {
    std::string why;
    const auto header = wire::decode_header(wire::encode_header({m, p}), wide, &why);
    REQUIRE(header);
    CHECK(header->message_length == m);
    CHECK(header->payload_length == p);
    CHECK(why.empty());
  }
  const std::array<std::uint8_t, 8> literal{0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x02};
  const auto header = wire::decode_header(literal, wide, nullptr);
  REQUIRE(header);
  CHECK(header->message_length == 256);
  CHECK(header->payload_length == 65538);
}

TEST_CASE("decode_header enforces the limits exactly", "[wire]") {
  const wire::Limits limits{100, 200};
  std::string why;
  CHECK(wire::decode_header(wire::encode_header({100, 200}), limits, &why));
  CHECK_FALSE(wire::decode_header(wire::encode_header({101, 0}), limits, &why));
  CHECK(why.find("limit") != std::string::npos);
  why.clear();
  CHECK_FALSE(wire::decode_header(wire::encode_header({1, 201}), limits, &why));
  CHECK(why.find("limit") != std::string::npos);
  why.clear();
  CHECK_FALSE(wire::decode_header(wire::encode_header({0, 0}), limits, &why));
  CHECK_FALSE(why.empty());
  // max_payload 0: this plane carries no payloads.
  CHECK_FALSE(wire::decode_header(wire::encode_header({1, 1}), wire::Limits{100, 0}, nullptr));
}

// --- FrameDecoder ----------------------------------------------------------------

TEST_CASE("FrameDecoder decodes a frame split at every byte boundary once", "[wire]") {
  const wire::Limits limits{4096, 4096};
  const std::string message = "hello, protobuf";
  const std::string payload = "chunk bytes \x00\x01\xff";
  const std::string frame = frame_bytes(message, payload);

  for (std::size_t cut = 0; cut <= frame.size(); ++cut) {
    INFO("split at " << cut);
    wire::FrameDecoder decoder(limits);
    REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(0, cut))));
    if (cut < frame.size()) CHECK_FALSE(decoder.next());
    REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(cut))));
    auto got = decoder.next();
    REQUIRE(got);
    CHECK(got->message == message);
    CHECK(got->payload == payload);
    CHECK_FALSE(decoder.next());
    CHECK(decoder.error().empty());
  }

  // And one byte per feed.
  wire::FrameDecoder decoder(limits);
  int decoded = 0;
  for (std::size_t i = 0; i < frame.size(); ++i) {
    REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(i, 1))));
    while (auto got = decoder.next()) {
      ++decoded;
      CHECK(i == frame.size() - 1);
      CHECK(got->message == message);
      CHECK(got->payload == payload);
    }
  }
  CHECK(decoded == 1);
}

TEST_CASE("FrameDecoder yields several frames from one feed in order", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 4096});
  const std::string stream =
      frame_bytes("one") + frame_bytes("two", "PAY") + frame_bytes("three", std::string(1000, 'x'));
  REQUIRE(decoder.feed(bytes_of(stream)));
  auto a = decoder.next();
  auto b = decoder.next();
  auto c = decoder.next();
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  CHECK(a->message == "one");
  CHECK(a->payload.empty());
  CHECK(b->message == "two");
  CHECK(b->payload == "PAY");
  CHECK(c->message == "three");
  CHECK(c->payload == std::string(1000, 'x'));
  CHECK_FALSE(decoder.next());
}

TEST_CASE("FrameDecoder survives a long stream fed in random pieces", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 8192});
  std::mt19937 rng(1234);
  std::vector<std::pair<std::string, std::string>> sent;
  std::string stream;
  for (int i = 0; i < 500; ++i) {
    std::string message = "msg-" + std::to_string(i) + std::string(rng() % 300, static_cast<char>('a' + i % 26));
    std::string payload(rng() % 3 == 0 ? 0 : rng() % 8192, static_cast<char>(i));
    stream += frame_bytes(message, payload);
    sent.emplace_back(std::move(message), std::move(payload));
  }
  std::size_t at = 0;
  std::size_t got = 0;
  while (at < stream.size()) {
    const std::size_t n = std::min<std::size_t>(stream.size() - at, 1 + rng() % 5000);
    REQUIRE(decoder.feed(bytes_of(std::string_view(stream).substr(at, n))));
    at += n;
    while (auto frame = decoder.next()) {
      REQUIRE(got < sent.size());
      CHECK(frame->message == sent[got].first);
      CHECK(frame->payload == sent[got].second);
      ++got;
    }
  }
  CHECK(got == sent.size());
}

TEST_CASE("FrameDecoder waits for the rest of a truncated frame", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 4096});
  const std::string frame = frame_bytes("truncated message", "and payload");
  REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(0, 5))));  // part of the header
  CHECK_FALSE(decoder.next());
  REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(5, 10))));  // header + part of the message
  CHECK_FALSE(decoder.next());
  REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(15, frame.size() - 16))));  // all but one byte
  CHECK_FALSE(decoder.next());
  CHECK(decoder.error().empty());
  REQUIRE(decoder.feed(bytes_of(std::string_view(frame).substr(frame.size() - 1))));
  auto got = decoder.next();
  REQUIRE(got);
  CHECK(got->message == "truncated message");
  CHECK(got->payload == "and payload");
}

TEST_CASE("FrameDecoder rejects a zero message length", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 4096});
  CHECK_FALSE(decoder.feed(bytes_of(raw_header(0, 0))));
  CHECK_FALSE(decoder.error().empty());
  CHECK_FALSE(decoder.next());
  // The stream stays dead.
  CHECK_FALSE(decoder.feed(bytes_of(frame_bytes("ok"))));
  CHECK_FALSE(decoder.next());
}

TEST_CASE("FrameDecoder rejects a 0xFFFFFFFF length as soon as the header is in", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 4096});
  const std::string header = raw_header(0xffffffffu, 0);
  REQUIRE(decoder.feed(bytes_of(std::string_view(header).substr(0, 7))));  // not known yet
  CHECK(decoder.error().empty());
  CHECK_FALSE(decoder.feed(bytes_of(std::string_view(header).substr(7))));  // the 8th byte: no body fed
  CHECK(decoder.error().find("limit") != std::string::npos);
  CHECK_FALSE(decoder.next());

  // Also when the whole header arrives in one feed.
  wire::FrameDecoder other(wire::Limits{4096, 4096});
  CHECK_FALSE(other.feed(bytes_of(header)));
}

TEST_CASE("FrameDecoder rejects an oversized payload length", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 1000});
  CHECK_FALSE(decoder.feed(bytes_of(raw_header(10, 1001))));
  CHECK(decoder.error().find("limit") != std::string::npos);

  wire::FrameDecoder no_payloads(wire::Limits{4096, 0});
  CHECK_FALSE(no_payloads.feed(bytes_of(raw_header(10, 1))));
}

TEST_CASE("FrameDecoder rejects an oversized message length", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 0});
  CHECK_FALSE(decoder.feed(bytes_of(raw_header(4097, 0))));
  CHECK(decoder.error().find("limit") != std::string::npos);
}

TEST_CASE("FrameDecoder accepts lengths exactly at the limits", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{300, 500});
  const std::string message(300, 'm');
  const std::string payload(500, 'p');
  REQUIRE(decoder.feed(bytes_of(frame_bytes(message, payload))));
  auto got = decoder.next();
  REQUIRE(got);
  CHECK(got->message == message);
  CHECK(got->payload == payload);
}

TEST_CASE("FrameDecoder flags a bad header that follows a good frame", "[wire]") {
  wire::FrameDecoder decoder(wire::Limits{4096, 0});
  const std::string stream = frame_bytes("good") + raw_header(0xffffffffu, 0);
  decoder.feed(bytes_of(stream));
  auto got = decoder.next();
  REQUIRE(got);
  CHECK(got->message == "good");
  CHECK_FALSE(decoder.next());
  CHECK_FALSE(decoder.error().empty());
  CHECK_FALSE(decoder.feed(bytes_of(frame_bytes("more"))));
}

// --- Connection over loopback -----------------------------------------------------

TEST_CASE("Connection delivers frames in order with their payloads", "[wire]") {
  Loopback net;
  auto [client_socket, server_socket] = net.socket_pair();
  const auto options = options_with(5s, 5s, 5s);
  auto server = make_server(std::move(server_socket), options);
  auto client = make_client(std::move(client_socket), options);
  CHECK(server->remote().address().to_string() == "127.0.0.1");
  Recorder rec;
  rec.start(server);
  Recorder client_rec;
  client_rec.start(client);
  std::size_t sent_callbacks = 0;
  client->set_on_sent([&] { ++sent_callbacks; });

  const std::size_t kFrames = 40;
  std::vector<std::string> messages;
  std::vector<std::shared_ptr<std::string>> payloads;
  for (std::size_t i = 0; i < kFrames; ++i) {
    messages.push_back("frame #" + std::to_string(i));
    // Mixed sizes: none, tiny, and a few large ones up to the 1 MiB limit.
    std::size_t size = i % 3 == 0 ? 0 : (i % 10 == 1 ? (1u << 20) - i : 17 * i + 1);
    auto payload = std::make_shared<std::string>(size, '\0');
    for (std::size_t k = 0; k < size; ++k) (*payload)[k] = static_cast<char>((k * 31 + i) & 0xff);
    payloads.push_back(payload);
    client->send(
        messages.back(),
        wire::Payload{std::span(reinterpret_cast<const std::uint8_t*>(payload->data()), payload->size()), payload});
  }
  const bool all_in = pump(
      net.io,
      [&] { return rec.frames.size() == kFrames && rec.frames.back().payload.size() == payloads.back()->size(); }, 5s);
  REQUIRE(all_in);
  for (std::size_t i = 0; i < kFrames; ++i) {
    INFO("frame " << i);
    CHECK(rec.frames[i].message == messages[i]);
    CHECK(rec.frames[i].payload_length == payloads[i]->size());
    CHECK(rec.frames[i].payload == *payloads[i]);
  }
  std::uint64_t total = 0;
  for (auto& p : payloads) total += p->size();
  CHECK(server->payload_bytes_received() == total);
  CHECK(pump(
      net.io, [&] { return sent_callbacks == kFrames; }, 2s));
  CHECK(client->queued_bytes() == 0);
  CHECK_FALSE(rec.closed);

  client->close("test over");
  CHECK(client->closed());
  REQUIRE(client_rec.closed);
  CHECK(*client_rec.closed == "test over");
  CHECK(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  CHECK(rec.closed->find("closed by peer") != std::string::npos);
}

TEST_CASE("Connection cuts a peer that announces an oversized frame, and the server lives on", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.start(server);

  // Only the 8-byte header: the body is never sent, so closing proves the
  // check happens before reading (or allocating) it.
  write_raw(client, raw_header(0xffffffffu, 0));
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  CHECK(rec.closed->find("limit") != std::string::npos);
  CHECK(rec.frames.empty());
  CHECK(server->closed());
  CHECK(pump(
      net.io, [&] { return drain_raw(client, nullptr); }, 2s));  // the client sees the close

  // A second connection on the same acceptor works.
  auto [client2, server_socket2] = net.pair();
  auto server2 = make_server(std::move(server_socket2), options_with(5s, 5s, 5s));
  Recorder rec2;
  rec2.start(server2);
  write_raw(client2, frame_bytes("hello again", "xyz"));
  REQUIRE(pump(
      net.io, [&] { return !rec2.frames.empty() && rec2.frames[0].payload == "xyz"; }, 2s));
  CHECK(rec2.frames[0].message == "hello again");
  CHECK_FALSE(rec2.closed);
  server2->close("done");
}

TEST_CASE("Connection cuts a peer that announces a payload over the limit", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto options = options_with(5s, 5s, 5s);
  options.limits.max_payload = 1000;
  auto server = make_server(std::move(server_socket), options);
  Recorder rec;
  rec.start(server);
  write_raw(client, raw_header(5, 1001));
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  CHECK(rec.closed->find("limit") != std::string::npos);
  CHECK(rec.frames.empty());
}

TEST_CASE("Connection closes a connection that sends nothing by the first-frame deadline", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(200ms, 5s, 5s));
  Recorder rec;
  const auto start = Clock::now();
  rec.start(server);
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s));
  const double elapsed = std::chrono::duration<double, std::milli>(rec.closed_at - start).count();
  if (kTimingAsserted) {
    CHECK(elapsed >= 190);
    CHECK(elapsed < 1000);
  }
  CHECK(rec.closed->find("deadline") != std::string::npos);
}

TEST_CASE("Connection's first-frame deadline covers the whole first frame", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(200ms, 5s, 5s));
  Recorder rec;
  const auto start = Clock::now();
  rec.start(server);
  const std::string frame = frame_bytes("never finished");
  write_raw(client, std::string_view(frame).substr(0, 12));  // header + 4 bytes of the message
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s));
  const double elapsed = std::chrono::duration<double, std::milli>(rec.closed_at - start).count();
  if (kTimingAsserted) {
    CHECK(elapsed >= 190);
    CHECK(elapsed < 1000);
  }
  CHECK(rec.frames.empty());
}

TEST_CASE("Connection closes an idle connection after the idle deadline", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 200ms, 5s));
  Recorder rec;
  rec.start(server);
  write_raw(client, frame_bytes("hello"));
  REQUIRE(pump(
      net.io, [&] { return rec.frames.size() == 1; }, 2s));
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s));
  const double idle = std::chrono::duration<double, std::milli>(rec.closed_at - rec.last_frame_at).count();
  if (kTimingAsserted) {
    CHECK(idle >= 190);
    CHECK(idle < 1000);
  }
  CHECK(rec.closed->find("deadline") != std::string::npos);
}

TEST_CASE("Connection stays open while frames keep coming within the idle deadline", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(300ms, 300ms, 5s));
  Recorder rec;
  rec.start(server);
  // A frame every 100 ms for 0.6 s: longer than first_frame and idle, never idle that long.
  auto next_send = Clock::now();
  int sent = 0;
  pump(
      net.io, [&] { return sent == 6 && rec.frames.size() == 6; }, 2s,
      [&] {
        if (sent < 6 && Clock::now() >= next_send) {
          write_raw(client, frame_bytes("ping " + std::to_string(sent)));
          ++sent;
          next_send += 100ms;
        }
      });
  CHECK(rec.frames.size() == 6);
  CHECK_FALSE(rec.closed);
}

TEST_CASE("Connection cuts off a peer trickling a frame", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 300ms));
  Recorder rec;
  rec.start(server);
  write_raw(client, frame_bytes("first"));
  REQUIRE(pump(
      net.io, [&] { return rec.frames.size() == 1; }, 2s));

  // 1 byte every 50 ms of a frame that would take 2 s to arrive.
  const std::string frame = frame_bytes(std::string(32, 't'));
  std::size_t sent = 0;
  auto next_send = Clock::now();
  const auto start = next_send;
  pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s,
      [&] {
        if (sent < frame.size() && Clock::now() >= next_send) {
          write_raw(client, std::string_view(frame).substr(sent, 1));
          ++sent;
          next_send += 50ms;
        }
      });
  REQUIRE(rec.closed);
  CHECK(rec.closed->find("deadline") != std::string::npos);
  CHECK(rec.frames.size() == 1);  // the trickled frame never got through
  CHECK(sent < frame.size());
  if (kTimingAsserted) CHECK(ms_since(start) < 1500);
}

// Timeouts::frame runs from a frame's first byte to its last: with idle=5 s
// and frame=300 ms, a peer trickling its header a byte every 50 ms is cut
// about 300 ms after the first byte, not after idle + frame.
TEST_CASE("Connection's frame deadline counts from the frame's first byte", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 300ms));
  Recorder rec;
  rec.start(server);
  write_raw(client, frame_bytes("first"));
  REQUIRE(pump(
      net.io, [&] { return rec.frames.size() == 1; }, 2s));

  const std::string frame = frame_bytes(std::string(32, 't'));
  std::size_t sent = 0;
  auto next_send = Clock::now();
  const auto start = next_send;
  pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s,
      [&] {
        if (sent < frame.size() && Clock::now() >= next_send) {
          write_raw(client, std::string_view(frame).substr(sent, 1));
          ++sent;
          next_send += 50ms;
        }
      });
  REQUIRE(rec.closed);
  const double cut_after = std::chrono::duration<double, std::milli>(rec.closed_at - start).count();
  INFO("cut " << cut_after << " ms after the frame's first byte (frame timeout 300 ms)");
  if (kTimingAsserted) CHECK(cut_after < 450);
}

TEST_CASE("Connection cuts a peer that does not read once max_queued_bytes is passed", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto options = options_with(5s, 5s, 5s);
  options.max_queued_bytes = 1 << 20;
  auto server = make_server(std::move(server_socket), options);
  Recorder rec;
  rec.start(server);

  // The client never reads. One 256 KiB frame per slice: at first each is
  // handed to the kernel (on_sent fires); once the socket buffers are full the
  // queue grows until it passes the cap.
  auto block = std::make_shared<std::vector<std::uint8_t>>(256 * 1024, 0x5a);
  std::uint64_t sent = 0;
  std::size_t max_queued = 0;
  int handed_to_kernel = 0;
  server->set_on_sent([&] { ++handed_to_kernel; });
  ensure_handshake(client);
  pump(
      net.io, [&] { return rec.closed.has_value(); }, 5s,
      [&] {
        if (server->closed()) return;
        server->send("bulk", wire::Payload{*block, block});
        sent += wire::kHeaderSize + 4 + block->size();
        if (!server->closed()) max_queued = std::max(max_queued, server->queued_bytes());
      });
  REQUIRE(rec.closed);
  CHECK(rec.closed->find("not reading") != std::string::npos);
  CHECK(handed_to_kernel > 0);                    // writes did progress before the peer stalled
  CHECK(max_queued <= options.max_queued_bytes);  // never held more than the cap
  CHECK(sent > options.max_queued_bytes + static_cast<std::uint64_t>(handed_to_kernel) * block->size());
  CHECK(server->queued_bytes() == 0);  // the queue is dropped on close
}

TEST_CASE("Connection does not cut a peer that reads as fast as it is sent to", "[wire]") {
  Loopback net;
  auto [client_socket, server_socket] = net.socket_pair();
  auto options = options_with(5s, 5s, 5s);
  options.max_queued_bytes = 1 << 20;
  auto server = make_server(std::move(server_socket), options);
  auto client = make_client(std::move(client_socket), options);
  Recorder rec;
  rec.start(server);
  Recorder client_rec;
  client_rec.start(client);
  // 4 MiB in total (4x the cap), never more than 512 KiB unsent at once.
  auto block = std::make_shared<std::vector<std::uint8_t>>(256 * 1024, 0x11);
  int sent = 0;
  pump(
      // The 16th frame's header is handed on before its payload is read:
      // wait for the bytes, not the frame count.
      net.io, [&] { return client->payload_bytes_received() == 16ull * block->size() || rec.closed.has_value(); }, 5s,
      [&] {
        while (sent < 16 && server->queued_bytes() + block->size() <= options.max_queued_bytes / 2) {
          server->send("bulk", wire::Payload{*block, block});
          ++sent;
        }
      });
  CHECK(client_rec.frames.size() == 16);
  CHECK_FALSE(rec.closed);
  CHECK(client->payload_bytes_received() == 16ull * block->size());
}

TEST_CASE("Connection::send_and_close sends the frame, then closes", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.start(server);
  ensure_handshake(client);
  server->send("before");
  server->send_and_close("goodbye", "finished");
  CHECK_FALSE(server->closed());  // not before the bytes are out
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  CHECK(*rec.closed == "finished");

  std::string received;
  REQUIRE(pump(
      net.io, [&] { return drain_raw(client, &received); }, 2s));
  CHECK(received == frame_bytes("before") + frame_bytes("goodbye"));
  server->send("after close");  // a no-op
  CHECK(server->queued_bytes() == 0);
}

TEST_CASE("Connection::send_and_close stops reading: what the peer sends after it is never handled", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.start(server);
  // The client never reads: the goodbye stays queued while it goes on sending.
  auto block = std::make_shared<std::vector<std::uint8_t>>(4 * 1024 * 1024, 0x33);
  server->send("bulk", wire::Payload{*block, block});
  server->send_and_close("goodbye", "finished");
  std::string burst;
  for (int i = 0; i < 1000; ++i) burst += frame_bytes("request");
  write_raw(client, burst);
  pump(
      net.io, [] { return false; }, 300ms);
  CHECK(rec.frames.empty());  // a connection that kept reading would hand them all on
  const auto queued = server->queued_bytes();
  server->send("more");  // nothing is queued behind the goodbye
  CHECK(server->queued_bytes() == queued);
}

TEST_CASE("Connection::send_and_close gives a peer that does not read a short grace, not the write deadline",
          "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto options = options_with(5s, 5s, 5s);
  options.timeouts.write = 60s;
  options.timeouts.close_linger = 500ms;
  options.max_queued_bytes = 64 * 1024 * 1024;
  auto server = make_server(std::move(server_socket), options);
  Recorder rec;
  rec.start(server);
  auto block = std::make_shared<std::vector<std::uint8_t>>(16 * 1024 * 1024, 0x44);
  server->send("bulk", wire::Payload{*block, block});
  const auto start = Clock::now();
  server->send_and_close("goodbye", "finished");
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 10s));
  CHECK(*rec.closed == "finished");
  if (kTimingAsserted) {
    CHECK(rec.closed_at - start >= 400ms);
    CHECK(rec.closed_at - start < 5s);  // the write deadline would be 60 s
  }
}

TEST_CASE("Connection closes when the frame handler leaves a payload unread", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.read_payloads = false;
  rec.start(server);
  // The payload itself looks like a frame: a connection that skipped the
  // check would go on to deliver it as a second frame.
  const std::string payload = frame_bytes("smuggled");
  write_raw(client, frame_bytes("has payload", payload));
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  REQUIRE(rec.frames.size() == 1);
  CHECK(rec.frames[0].message == "has payload");
  CHECK(rec.frames[0].payload_length == payload.size());
  CHECK(rec.closed->find("protocol error") != std::string::npos);
  CHECK(rec.closed->find("payload") != std::string::npos);
}

TEST_CASE("Connection closes when read_payload is given the wrong size", "[wire]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  std::optional<std::string> closed;
  std::vector<std::uint8_t> buffer(5);
  wire::Connection* raw = server.get();
  server->start([&](std::string_view, std::uint32_t) { raw->read_payload(buffer, [] {}); },
                [&](const std::string& reason) { closed = reason; });
  write_raw(client, frame_bytes("m", "0123456789"));
  REQUIRE(pump(
      net.io, [&] { return closed.has_value(); }, 2s));
  CHECK(closed->find("protocol error") != std::string::npos);
}

// --- TLS ------------------------------------------------------------------------------

TEST_CASE("Connection closes a peer that sends garbage instead of a TLS ClientHello", "[wire][tls]") {
  Loopback net;
  auto [client, server_socket] = net.socket_pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.start(server);
  const std::string garbage = frame_bytes("plaintext hello");
  asio::write(client, asio::buffer(garbage));
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 2s));
  CHECK(rec.closed->find("TLS handshake failed") != std::string::npos);
  CHECK(rec.frames.empty());
}

TEST_CASE("Connection proves keys in the handshake, and a refusing verify hook sends nothing", "[wire][tls]") {
  Loopback net;
  {
    auto [client_socket, server_socket] = net.socket_pair();
    auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
    auto client = make_client(std::move(client_socket), options_with(5s, 5s, 5s));
    Recorder rec;
    rec.start(server);
    Recorder client_rec;
    client_rec.start(client);
    client->send("hi");
    REQUIRE(pump(
        net.io, [&] { return rec.frames.size() == 1; }, 2s));
    REQUIRE(client->peer_key());
    CHECK(*client->peer_key() == test_identity().key_hash);
    CHECK(client->peer_id() == test_identity().peer_id());
    CHECK_FALSE(server->peer_key());  // this client presented no certificate
    // Both ends, before the recorders their handlers point at go out of scope.
    client->close("done");
    server->close("done");
  }
  auto [client_socket, server_socket] = net.socket_pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  auto client = make_client(std::move(client_socket), options_with(5s, 5s, 5s));
  client->set_verify([](const wire::Connection&) { return std::string("not the key we expected"); });
  Recorder rec;
  rec.start(server);
  Recorder client_rec;
  client_rec.start(client);
  client->send("must never arrive");
  REQUIRE(pump(
      net.io, [&] { return client_rec.closed.has_value() && rec.closed.has_value(); }, 2s));
  CHECK(*client_rec.closed == "not the key we expected");
  CHECK(rec.frames.empty());
}

TEST_CASE("Connection cuts a TLS handshake that never finishes by the first-frame deadline", "[wire][tls]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(300ms, 5s, 5s));
  Recorder rec;
  const auto start = Clock::now();
  rec.start(server);
  // One step: the ClientHello goes out, the rest of the handshake never does.
  CHECK_FALSE(client.tls->step());
  REQUIRE(pump(
      net.io, [&] { return rec.closed.has_value(); }, 3s));
  CHECK(rec.closed->find("deadline") != std::string::npos);
  if (kTimingAsserted) CHECK(ms_since(start) < 1500);
}

TEST_CASE("Connection carries bulk payloads both ways at once, larger than one send", "[wire][tls]") {
  // Both ends send 4 MiB payloads while they receive the other's: reads and
  // writes overlap on one TLS stream, and each payload spans many sends of
  // the stream's 256 KiB window.
  Loopback net;
  auto options = options_with(5s, 5s, 5s);
  options.limits.max_payload = 4u << 20;
  ConnectedPair pair(net, options);
  auto& [server, client, server_rec, client_rec] = pair;
  constexpr std::size_t kFrames = 6;
  std::vector<std::shared_ptr<std::string>> sent_by_client;
  std::vector<std::shared_ptr<std::string>> sent_by_server;
  auto make_payload = [](std::size_t seed) {
    auto payload = std::make_shared<std::string>((4u << 20) - seed, '\0');
    std::uint32_t x = 2463534242u + static_cast<std::uint32_t>(seed);
    for (auto& c : *payload) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      c = static_cast<char>(x);
    }
    return payload;
  };
  for (std::size_t i = 0; i < kFrames; ++i) {
    sent_by_client.push_back(make_payload(2 * i));
    sent_by_server.push_back(make_payload(2 * i + 1));
    client->send("c" + std::to_string(i), as_payload(sent_by_client.back()));
    server->send("s" + std::to_string(i), as_payload(sent_by_server.back()));
  }
  const auto complete = [](const Recorder& rec) {
    return rec.frames.size() == kFrames && !rec.frames.back().payload.empty();
  };
  REQUIRE(pump(
      net.io, [&] { return complete(server_rec) && complete(client_rec); }, 20s));
  for (std::size_t i = 0; i < kFrames; ++i) {
    INFO("frame " << i);
    CHECK(server_rec.frames[i].message == "c" + std::to_string(i));
    CHECK(server_rec.frames[i].payload == *sent_by_client[i]);
    CHECK(client_rec.frames[i].message == "s" + std::to_string(i));
    CHECK(client_rec.frames[i].payload == *sent_by_server[i]);
  }
  CHECK_FALSE(server_rec.closed);
  CHECK_FALSE(client_rec.closed);
}

TEST_CASE("Connection completes a write whose last byte fills the TLS stream's send window exactly", "[wire][tls]") {
  // Header, message and payload add up to exactly one (then two) of the
  // stream's sealed sends: the write is complete when that send is, with
  // nothing left to seal. A stream that waited for more would never send
  // the frames queued behind it.
  Loopback net;
  auto options = options_with(5s, 5s, 5s);
  options.limits.max_payload = 1u << 20;
  ConnectedPair pair(net, options);
  auto& [server, client, server_rec, client_rec] = pair;
  std::size_t sent = 0;
  client->set_on_sent([&sent] { ++sent; });
  const std::string message = "w";
  std::vector<std::shared_ptr<std::string>> payloads;
  for (const std::size_t windows : {1, 2, 1}) {
    const std::size_t length = windows * p2pshare::tls::Stream::kBulkBytes - wire::kHeaderSize - message.size();
    payloads.push_back(std::make_shared<std::string>(length, static_cast<char>('a' + payloads.size())));
    const auto& p = payloads.back();
    client->send(message, as_payload(p));
  }
  client->send("after");
  REQUIRE(pump(
      net.io, [&] { return server_rec.frames.size() == 4 && sent == 4; }, 10s));
  for (std::size_t i = 0; i < payloads.size(); ++i) {
    INFO("frame " << i);
    CHECK(server_rec.frames[i].payload == *payloads[i]);
  }
  CHECK(server_rec.frames[3].message == "after");
  CHECK(client->queued_bytes() == 0);
  CHECK_FALSE(server_rec.closed);
}

TEST_CASE("Connection follows a peer's TLS KeyUpdate both ways and keeps the conversation going", "[wire][tls]") {
  Loopback net;
  auto [client, server_socket] = net.pair();
  auto server = make_server(std::move(server_socket), options_with(5s, 5s, 5s));
  Recorder rec;
  rec.start(server);
  write_raw(client, frame_bytes("before"));
  REQUIRE(pump(
      net.io, [&] { return rec.frames.size() == 1; }, 3s));
  // The client rotates its keys and asks the server to rotate its own
  // (OpenSSL answers with the server's next write).
  REQUIRE(client.tls->request_key_update());
  write_raw(client, frame_bytes("after"));
  REQUIRE(pump(
      net.io, [&] { return rec.frames.size() == 2; }, 3s));
  CHECK(rec.frames[1].message == "after");
  server->send("reply");
  std::string plain;
  CHECK(pump(
      net.io, [&] { return drain_raw(client, &plain) || plain.size() >= frame_bytes("reply").size(); }, 3s));
  CHECK(plain == frame_bytes("reply"));
  CHECK_FALSE(rec.closed);
  server->close("done");
}

// --- SyncClient -------------------------------------------------------------------

TEST_CASE("SyncClient fails fast with an Error naming the address when the port is closed", "[wire]") {
  std::uint16_t port = 0;
  {
    asio::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port = acceptor.local_endpoint().port();
  }  // closed again: nothing listens there now
  wire::SyncClient client(wire::Limits{});
  const auto start = Clock::now();
  try {
    client.connect("127.0.0.1", port, 3s);
    FAIL("connected to a closed port");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::unavailable);
    CHECK(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
  }
  if (kTimingAsserted) CHECK(ms_since(start) < 1000);
}

TEST_CASE("SyncClient::receive times out with an Error when the server is silent", "[wire]") {
  Loopback net;  // listens; a server completes the handshakes, then says nothing
  RawServer server(net);
  wire::SyncClient client(wire::Limits{});
  client.connect("127.0.0.1", net.port(), 2s);
  server.ready();
  const auto start = Clock::now();
  try {
    client.receive(200ms);
    FAIL("received from a silent server");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::unavailable);
    CHECK(std::string(e.what()).find("127.0.0.1:" + std::to_string(net.port())) != std::string::npos);
  }
  const double elapsed = ms_since(start);
  if (kTimingAsserted) {
    CHECK(elapsed >= 190);
    CHECK(elapsed < 1500);
  }
}

TEST_CASE("SyncClient sends and receives whole frames", "[wire]") {
  Loopback net;
  RawServer raw(net);
  wire::SyncClient client(wire::Limits{4096, 0});
  client.connect("127.0.0.1", net.port(), 2s);
  auto& server = raw.ready();
  CHECK(client.server_key() == test_identity().key_hash);

  client.send("request", 2s);
  CHECK(server.receive(8 + 7, 2s) == frame_bytes("request"));

  // Two answers in one write, then one split in two writes.
  server.send(frame_bytes("answer 1") + frame_bytes("answer 2"));
  CHECK(client.receive(2s) == "answer 1");
  CHECK(client.receive(2s) == "answer 2");
  const std::string third = frame_bytes("answer 3");
  server.send(std::string_view(third).substr(0, 3));
  server.send(std::string_view(third).substr(3));
  CHECK(client.receive(2s) == "answer 3");

  // A bad frame is a protocol error; a closed connection is unavailable.
  server.send(raw_header(0, 0));
  try {
    client.receive(2s);
    FAIL("accepted a zero-length message");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::protocol);
  }
}

TEST_CASE("SyncClient::receive reports a closed connection as unavailable", "[wire]") {
  Loopback net;
  RawServer server(net);
  wire::SyncClient client(wire::Limits{4096, 0});
  client.connect("127.0.0.1", net.port(), 2s);
  server.ready();
  server.socket().close();
  const auto start = Clock::now();
  try {
    client.receive(2s);
    FAIL("received from a closed connection");
  } catch (const Error& e) {
    CHECK(e.code() == Errc::unavailable);
  }
  if (kTimingAsserted) CHECK(ms_since(start) < 1000);
}
