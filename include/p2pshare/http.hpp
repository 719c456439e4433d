// The HTTP side both servers share (--http-addr): our own Asio connections on
// the server's io_context, with requests parsed by Debian's http_parser
// (libhttp-parser-dev), hardened like the p2p planes: a cap on connections,
// a header-size and a body-size limit, a deadline for the whole request to
// arrive and one for every write of the answer. One request per connection
// (every answer says `Connection: close`), so no state outlives an exchange.
//
// Threading: everything runs on the io_context's thread; the handler is
// called there, and an Exchange must be used there only.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <asio.hpp>

#include "p2pshare/cli.hpp"

namespace p2pshare::http {

struct Limits {
  std::size_t max_connections = 256;  // open at once; more are closed at accept
  std::size_t max_header_bytes = std::size_t{16} * 1024;
  std::size_t max_body_bytes = std::size_t{64} * 1024;
  std::chrono::milliseconds request_timeout{10000};  // the whole request must arrive by then
  std::chrono::milliseconds write_timeout{30000};    // each write of the answer must finish by then
  // After the request: the handler must start answering by then (a gateway
  // waiting for the first chunk, a register hashing a large file).
  std::chrono::milliseconds answer_timeout{std::chrono::minutes(10)};
};

struct Request {
  std::string method;                                        // "GET", "POST", ...
  std::string path;                                          // percent-decoded path, without the query
  std::string query;                                         // raw, without '?'
  std::vector<std::pair<std::string, std::string>> headers;  // names lowercased
  std::string body;
  // The first header of that (lowercase) name.
  std::optional<std::string> header(std::string_view name) const;
  // The first query parameter of that name, percent-decoded.
  std::optional<std::string> query_param(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

// The incremental request decoder a connection feeds with what it reads:
// http_parser underneath, our limits on top. Public for the fuzz target.
class RequestParser {
 public:
  enum class State { incomplete, complete, refused };
  explicit RequestParser(const Limits& limits);
  ~RequestParser();
  RequestParser(const RequestParser&) = delete;
  RequestParser& operator=(const RequestParser&) = delete;
  // Feeds bytes; once complete or refused, later bytes are ignored.
  State feed(const char* data, std::size_t length);
  State state() const { return state_; }
  // Refused: the status to answer (400, 413, 431) and why.
  int refusal_status() const { return refusal_status_; }
  const std::string& refusal() const { return refusal_; }
  // Complete: the request (path percent-decoded, headers lowercased).
  const Request& request() const { return request_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  State state_ = State::incomplete;
  int refusal_status_ = 0;
  std::string refusal_;
  Request request_;
};

// One request's answer: either respond() once, or begin() then write() each
// piece (one at a time, the next after `written` ran with true) then end().
// Once the client is gone or a deadline passed, closed() is true and
// `written` gets false.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual void respond(Response response) = 0;
  // Headers of a streamed answer of exactly `content_length` body bytes.
  virtual void begin(int status, std::string content_type, std::vector<std::pair<std::string, std::string>> headers,
                     std::uint64_t content_length) = 0;
  // `bytes` stay valid while `owner` lives; they are sent without a copy.
  virtual void write(std::string_view bytes, std::shared_ptr<const void> owner,
                     std::function<void(bool ok)> written) = 0;
  virtual void end() = 0;
  virtual bool closed() const = 0;
  virtual bool answered() const = 0;  // respond() or begin() was called
  // Keeps `object` alive as long as the exchange (a handler's own state).
  virtual void keep(std::shared_ptr<void> object) = 0;
};

using Handler = std::function<void(const Request&, const std::shared_ptr<Exchange>&)>;

class Server {
 public:
  Server(asio::io_context& io, Limits limits, Handler handler);
  ~Server();
  // Binds and starts accepting; returns the address actually bound.
  cli::Address start(const cli::Address& address);
  // Closes the listener and every connection.
  void stop();
  std::size_t connections() const;
  // Requests answered, and their durations (request complete -> answer
  // handed over), for the metrics.
  std::function<void(double seconds)> on_answered;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Helpers for the handlers.
std::string escape_html(std::string_view text);
std::string status_text(int status);
Response json_response(int status, std::string json_text);
Response error_response(int status, std::string_view message);  // {"error": message}
std::string percent_decode(std::string_view text, bool plus_is_space);

// A single `bytes=` range of a `size`-byte body: [first, last] inclusive.
struct ByteRange {
  std::uint64_t first = 0;
  std::uint64_t last = 0;
};
// nullopt: the header is malformed or not satisfiable (answer 416); a
// multi-range header is refused the same way (one range is supported).
std::optional<ByteRange> parse_range(std::string_view header, std::uint64_t size);

}  // namespace p2pshare::http
