// A TLS 1.3 stream over a TCP socket, made for bulk transfer: OpenSSL does
// the record layer through a BIO of our own that reads from and writes to
// plain buffers, and this class moves those buffers to and from the socket
// in large system calls.
//
// Why not asio::ssl::stream: it moves one 16 KiB record per operation (one
// recv or send, one trip through the BIO pair and one completion per
// record), about 65,000 of each per GiB. Here a read takes whatever the
// socket has (up to 256 KiB) in one recv and decrypts every whole record in
// it into the caller's buffer; a write encrypts up to 256 KiB of records and
// hands them to the kernel in one send. docs/architecture.md, "TLS".
//
// Threading: every call and every completion on the socket's executor (one
// thread). At most one read operation (handshake or read) and one write
// operation are in flight at a time; they may overlap. Completions are
// always posted, never run inside the call that starts them.
//
// Lifetime: destroying the stream closes the socket; operations in flight
// complete with asio::error::operation_aborted.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <system_error>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "p2pshare/tls.hpp"

namespace p2pshare::tls {

class Stream {
 public:
  using Handler = std::function<void(const std::error_code&)>;
  using IoHandler = std::function<void(const std::error_code&, std::size_t)>;

  // Plaintext encrypted per send, and the receive buffer of a connection
  // that carries bulk data.
  static constexpr std::size_t kBulkBytes = std::size_t{256} * 1024;
  // Ciphertext produced but not sent (answers to the other side's
  // post-handshake messages while it does not read) past which the stream
  // fails: a peer cannot make us buffer without bound.
  static constexpr std::size_t kMaxUnsent = std::size_t{1024} * 1024;

  Stream(asio::ip::tcp::socket socket, asio::ssl::context& context);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  asio::ip::tcp::socket& socket();
  SSL* native_handle();
  asio::any_io_executor get_executor();

  void async_handshake(Side side, Handler handler);
  // Completes with at least one byte (or an error).
  void async_read_some(std::span<std::uint8_t> destination, IoHandler handler);
  // Completes when `destination` is full (or on an error, with the count so far).
  void async_read(std::span<std::uint8_t> destination, IoHandler handler);
  // Encrypts and sends every byte of `buffers` (they must stay valid until
  // the completion); completes once the kernel has taken all of it.
  void async_write(std::vector<asio::const_buffer> buffers, IoHandler handler);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// The error a stream reports for the other side's TCP FIN without a TLS
// close_notify (asio::ssl's own code for it, so callers test one thing).
std::error_code stream_truncated();

}  // namespace p2pshare::tls
