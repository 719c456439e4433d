// Framing and connections. Every frame is
//   u32 big-endian message_length | u32 big-endian payload_length |
//   message (protobuf, message_length bytes) | payload (raw, payload_length bytes)
// Both lengths are checked against the connection's limits before a byte of
// the body is read or allocated. Payloads (chunk bytes) travel outside
// protobuf so they go from socket to chunk buffer with no extra copy.
//
// Every connection runs over TLS 1.3 (p2pshare/tls.hpp): the handshake is
// the first step of start(), on the first-frame deadline; frames travel
// inside TLS records.
//
// Threading: a Connection lives on one io_context run by one thread; every
// public method must be called from that thread (post to it otherwise).
// Handlers fire on that thread. A Connection owns itself: it stays alive
// while an operation is in flight, and close() makes every later handler a
// no-op.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "p2pshare/tls.hpp"
#include "p2pshare/tls_stream.hpp"

namespace p2pshare::wire {

inline constexpr std::size_t kHeaderSize = 8;

struct Limits {
  std::uint32_t max_message = 64 * 1024;
  std::uint32_t max_payload = 0;  // 0: this plane carries no payloads
};

struct FrameHeader {
  std::uint32_t message_length = 0;
  std::uint32_t payload_length = 0;
};

std::array<std::uint8_t, kHeaderSize> encode_header(FrameHeader header);
// nullopt (with `why` set) when a length is zero/over the limit.
std::optional<FrameHeader> decode_header(std::span<const std::uint8_t, kHeaderSize> bytes, const Limits& limits,
                                         std::string* why);

// Incremental decoder over a byte stream: the same checks as Connection, for
// blocking clients, tools and fuzzers.
class FrameDecoder {
 public:
  explicit FrameDecoder(Limits limits) : limits_(limits) {}
  struct Frame {
    std::string message;
    std::string payload;
  };
  // Appends bytes. False once the stream is invalid (error() says why); a
  // caller then closes the connection.
  bool feed(std::span<const std::uint8_t> bytes);
  std::optional<Frame> next();
  const std::string& error() const { return error_; }

 private:
  Limits limits_;
  std::string buffer_;
  std::size_t consumed_ = 0;
  std::string error_;
};

struct Timeouts {
  std::chrono::milliseconds first_frame{10000};  // from accept/connect to the first whole frame
  std::chrono::milliseconds idle{60000};         // waiting for the next frame to start
  std::chrono::milliseconds frame{30000};        // from a frame's first byte to its last
  std::chrono::milliseconds write{30000};        // one queued frame fully written
  std::chrono::milliseconds close_linger{5000};  // send_and_close: the last frame out
};

struct ConnectionOptions {
  Limits limits;
  Timeouts timeouts;
  std::size_t max_queued_bytes = std::size_t{64} * 1024 * 1024;  // unsent bytes: past this the peer is cut off
};

// Something that gates bytes: a rate limiter. acquire() calls `go` once
// `bytes` may pass (at once, or later on the same io_context).
class Throttle {
 public:
  virtual ~Throttle() = default;
  virtual void acquire(std::size_t bytes, std::function<void()> go) = 0;
};

// Bytes that live elsewhere (a pooled chunk buffer): kept alive by `owner`
// until the write completes.
struct Payload {
  std::span<const std::uint8_t> bytes;
  std::shared_ptr<const void> owner;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // message: the protobuf bytes (valid during the call). payload_length > 0:
  // the handler must call read_payload() before returning, or the connection
  // closes with a protocol error.
  using FrameHandler = std::function<void(std::string_view message, std::uint32_t payload_length)>;
  using CloseHandler = std::function<void(const std::string& reason)>;

  // Checks what the handshake proved (peer_key()); a non-empty answer closes
  // the connection with it as the reason, before a byte of data is sent.
  using Verify = std::function<std::string(const Connection&)>;

  // `context` must outlive the connection's handshake (servers and links
  // keep theirs for their whole life).
  static std::shared_ptr<Connection> create(asio::ip::tcp::socket socket, asio::ssl::context& context, tls::Side side,
                                            ConnectionOptions options);
  ~Connection();

  // Runs after the handshake, before anything is read or sent.
  void set_verify(Verify verify) { verify_ = std::move(verify); }
  // The key the other side proved in the handshake (none: no certificate).
  const std::optional<tls::KeyHash>& peer_key() const { return peer_key_; }
  // The peer id that key proves.
  std::optional<PeerId> peer_id() const;

  // Handshakes, then starts reading (sends queued before wait for the
  // handshake). Handlers fire on the socket's io_context thread.
  // Called again (e.g. from inside a frame handler, once the first frame has
  // told which plane this is), it hands the connection to new handlers from
  // the next frame on.
  void start(FrameHandler on_frame, CloseHandler on_close);
  // Reads the pending payload into `destination` (its size must equal the
  // payload length), then calls `done` and resumes reading frames.
  void read_payload(std::span<std::uint8_t> destination, std::function<void()> done);
  // Queues a frame. Cuts the connection if unsent bytes pass the cap.
  void send(std::string message, Payload payload = {});
  // Sends this frame, then closes. Stops reading at once; closes anyway
  // after timeouts.close_linger if the peer has not taken the frame by then.
  void send_and_close(std::string message, const std::string& reason);
  void close(const std::string& reason);
  bool closed() const { return closed_; }
  void set_limits(Limits limits) { options_.limits = limits; }
  // From the next wait on: e.g. an owner's control connection may be quiet
  // for as long as a download takes.
  void set_timeouts(Timeouts timeouts) { options_.timeouts = timeouts; }
  void set_read_throttle(std::shared_ptr<Throttle> throttle) { read_throttle_ = std::move(throttle); }
  void set_write_throttle(std::shared_ptr<Throttle> throttle) { write_throttle_ = std::move(throttle); }
  // Called after each frame is fully handed to the kernel (for senders that
  // keep only a few frames queued and refill as they drain).
  void set_on_sent(std::function<void()> on_sent) { on_sent_ = std::move(on_sent); }
  std::size_t queued_bytes() const { return queued_bytes_; }
  const asio::ip::tcp::endpoint& remote() const { return remote_; }
  std::uint64_t payload_bytes_received() const { return payload_received_; }

 private:
  Connection(asio::ip::tcp::socket socket, asio::ssl::context& context, tls::Side side, ConnectionOptions options);
  void handshake();
  void read_header();
  void on_header(const std::error_code& ec);
  void read_message_part();
  void on_message(const std::error_code& ec);
  void arm_read_deadline(std::chrono::milliseconds timeout);
  void write_next();

  struct Outgoing {
    std::array<std::uint8_t, kHeaderSize> header;
    std::string message;
    Payload payload;
    bool close_after = false;
    std::string close_reason;
  };

  tls::Stream stream_;
  tls::Side side_;
  asio::ip::tcp::endpoint remote_;
  ConnectionOptions options_;
  Verify verify_;
  std::optional<tls::KeyHash> peer_key_;
  bool secured_ = false;  // handshake done and verified
  asio::steady_timer read_deadline_;
  asio::steady_timer write_deadline_;
  FrameHandler on_frame_;
  CloseHandler on_close_;
  std::array<std::uint8_t, kHeaderSize> header_bytes_{};
  FrameHeader header_;
  std::vector<std::uint8_t> message_;
  bool payload_claimed_ = false;
  bool started_ = false;
  bool in_frame_handler_ = false;
  FrameHandler next_on_frame_;
  bool first_frame_ = true;
  bool closed_ = false;
  bool closing_ = false;  // send_and_close: the last frame is queued
  std::deque<Outgoing> queue_;
  bool writing_ = false;
  std::size_t queued_bytes_ = 0;
  std::uint64_t payload_received_ = 0;
  std::shared_ptr<Throttle> read_throttle_;
  std::shared_ptr<Throttle> write_throttle_;
  std::function<void()> on_sent_;
};

// A blocking request/response client for the commands people type: every
// call has a deadline (asio's blocking_tcp_client pattern: async operations
// driven by io_context::run_for).
class SyncClient {
 public:
  // `identity`: the certificate to present (none: the client presents none).
  explicit SyncClient(Limits limits, const tls::Identity* identity = nullptr);
  // Connects and handshakes. Throws Error(unavailable) naming the address
  // when it cannot connect in time. `verify` then checks the server's key
  // (nullopt: accepted; else the error line, thrown as Error(unauthorized))
  // before anything is sent.
  void connect(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout,
               const std::function<std::optional<std::string>(const tls::KeyHash&)>& verify = {});
  // The key the server proved.
  const tls::KeyHash& server_key() const { return server_key_; }
  void send(const std::string& message, std::chrono::milliseconds timeout);
  // The next frame's message; throws Error(unavailable) on timeout or close.
  std::string receive(std::chrono::milliseconds timeout);
  void close();

 private:
  void run(std::chrono::milliseconds timeout, const char* what);
  asio::io_context io_;
  std::shared_ptr<asio::ssl::context> context_;
  tls::Stream stream_;
  tls::KeyHash server_key_{};
  FrameDecoder decoder_;
  std::string peer_;
};

// Tunes a connected TCP socket: no Nagle (small control messages go out at
// once). Buffer sizes are left to the kernel's autotuning.
void tune_socket(asio::ip::tcp::socket& socket);

// A clean end of the other side's stream: EOF, or TLS cut without close_notify.
bool is_eof(const std::error_code& ec);

}  // namespace p2pshare::wire
