#include "p2pshare/http.hpp"

#include <http_parser.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "p2pshare/listen.hpp"

namespace p2pshare::http {

std::optional<std::string> Request::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return value;
  }
  return std::nullopt;
}

std::optional<std::string> Request::query_param(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    const auto eq = pair.find('=');
    if (percent_decode(pair.substr(0, eq), true) != name) continue;
    return eq == std::string_view::npos ? std::string{} : percent_decode(pair.substr(eq + 1), true);
  }
  return std::nullopt;
}

std::string percent_decode(std::string_view text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%' && i + 2 < text.size()) {
      unsigned value = 0;
      const auto* begin = text.data() + i + 1;
      const auto [end, error] = std::from_chars(begin, begin + 2, value, 16);
      if (error == std::errc() && end == begin + 2) {
        out.push_back(static_cast<char>(value));
        i += 2;
        continue;
      }
    }
    out.push_back(plus_is_space && c == '+' ? ' ' : c);
  }
  return out;
}

std::string escape_html(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

std::string status_text(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 206:
      return "Partial Content";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 416:
      return "Range Not Satisfiable";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

Response json_response(int status, std::string json_text) {
  Response response;
  response.status = status;
  response.content_type = "application/json";
  response.body = std::move(json_text);
  response.body.push_back('\n');
  return response;
}

Response error_response(int status, std::string_view message) {
  return json_response(
      status, nlohmann::json{{"error", message}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

std::optional<ByteRange> parse_range(std::string_view header, std::uint64_t size) {
  constexpr std::string_view kPrefix = "bytes=";
  if (!header.starts_with(kPrefix) || size == 0) return std::nullopt;
  std::string_view spec = header.substr(kPrefix.size());
  while (!spec.empty() && spec.front() == ' ') spec.remove_prefix(1);
  while (!spec.empty() && spec.back() == ' ') spec.remove_suffix(1);
  if (spec.find(',') != std::string_view::npos) return std::nullopt;
  const auto dash = spec.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  const auto number = [](std::string_view digits) -> std::optional<std::uint64_t> {
    if (digits.empty() || digits.size() > 19) return std::nullopt;
    std::uint64_t value = 0;
    const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
    return value;
  };
  const std::string_view first_text = spec.substr(0, dash);
  const std::string_view last_text = spec.substr(dash + 1);
  if (first_text.empty()) {  // suffix: the last N bytes
    const auto suffix = number(last_text);
    if (!suffix || *suffix == 0) return std::nullopt;
    return ByteRange{size - std::min(*suffix, size), size - 1};
  }
  const auto first = number(first_text);
  if (!first || *first >= size) return std::nullopt;
  if (last_text.empty()) return ByteRange{*first, size - 1};
  const auto last = number(last_text);
  if (!last || *last < *first) return std::nullopt;
  return ByteRange{*first, std::min(*last, size - 1)};
}

namespace {

using Clock = std::chrono::steady_clock;

enum class Refusal { none, header_too_large, body_too_large };

}  // namespace

struct RequestParser::Impl {
  explicit Impl(const Limits& parser_limits) : limits(parser_limits) {
    http_parser_init(&parser, HTTP_REQUEST);
    parser.data = this;
  }
  Limits limits;
  http_parser parser{};
  Request request;
  std::string url;
  std::string field;
  std::string value;
  bool in_value = false;
  std::size_t header_bytes = 0;
  bool complete = false;
  Refusal refusal = Refusal::none;

  static Impl* self(http_parser* p) { return static_cast<Impl*>(p->data); }

  static const http_parser_settings& settings() {
    static const http_parser_settings s = [] {
      http_parser_settings out{};
      out.on_url = [](http_parser* p, const char* at, std::size_t length) {
        return self(p)->add_header_bytes(length) ? (self(p)->url.append(at, length), 0) : 1;
      };
      out.on_header_field = [](http_parser* p, const char* at, std::size_t length) {
        auto* c = self(p);
        if (!c->add_header_bytes(length)) return 1;
        if (c->in_value) c->flush_header();
        c->field.append(at, length);
        return 0;
      };
      out.on_header_value = [](http_parser* p, const char* at, std::size_t length) {
        auto* c = self(p);
        if (!c->add_header_bytes(length)) return 1;
        c->in_value = true;
        c->value.append(at, length);
        return 0;
      };
      out.on_headers_complete = [](http_parser* p) {
        auto* c = self(p);
        if (c->in_value) c->flush_header();
        if ((p->flags & F_CONTENTLENGTH) != 0 && p->content_length > c->limits.max_body_bytes) {
          c->refusal = Refusal::body_too_large;
          return -1;
        }
        return 0;
      };
      out.on_body = [](http_parser* p, const char* at, std::size_t length) {
        auto* c = self(p);
        if (c->request.body.size() + length > c->limits.max_body_bytes) {
          c->refusal = Refusal::body_too_large;
          return 1;
        }
        c->request.body.append(at, length);
        return 0;
      };
      out.on_message_complete = [](http_parser* p) {
        self(p)->complete = true;
        http_parser_pause(p, 1);
        return 0;
      };
      return out;
    }();
    return s;
  }

  bool add_header_bytes(std::size_t length) {
    header_bytes += length;
    if (header_bytes <= limits.max_header_bytes) return true;
    refusal = Refusal::header_too_large;
    return false;
  }

  void flush_header() {
    std::string name = field;
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
    request.headers.emplace_back(std::move(name), std::move(value));
    field.clear();
    value.clear();
    in_value = false;
  }
};

RequestParser::RequestParser(const Limits& limits) : impl_(std::make_unique<Impl>(limits)) {}
RequestParser::~RequestParser() = default;

RequestParser::State RequestParser::feed(const char* data, std::size_t length) {
  if (state_ != State::incomplete) return state_;
  auto& p = *impl_;
  http_parser_execute(&p.parser, &Impl::settings(), data, length);
  const auto refuse = [&](int status, std::string why) {
    state_ = State::refused;
    refusal_status_ = status;
    refusal_ = std::move(why);
    return state_;
  };
  if (p.refusal == Refusal::header_too_large) return refuse(431, "the request's headers are too large");
  if (p.refusal == Refusal::body_too_large) return refuse(413, "the request's body is too large");
  if (p.complete) {
    p.request.method = http_method_str(static_cast<http_method>(p.parser.method));
    http_parser_url parts{};
    http_parser_url_init(&parts);
    if (http_parser_parse_url(p.url.data(), p.url.size(), 0, &parts) != 0 || (parts.field_set & (1 << UF_PATH)) == 0) {
      return refuse(400, "malformed request target");
    }
    p.request.path = percent_decode(
        std::string_view(p.url).substr(parts.field_data[UF_PATH].off, parts.field_data[UF_PATH].len), false);
    if ((parts.field_set & (1 << UF_QUERY)) != 0) {
      p.request.query = p.url.substr(parts.field_data[UF_QUERY].off, parts.field_data[UF_QUERY].len);
    }
    request_ = std::move(p.request);
    state_ = State::complete;
    return state_;
  }
  const auto error = HTTP_PARSER_ERRNO(&p.parser);
  if (error != HPE_OK) return refuse(400, fmt::format("malformed request: {}", http_errno_name(error)));
  return state_;
}

namespace {

struct Connection : Exchange, std::enable_shared_from_this<Connection> {
  Connection(asio::ip::tcp::socket sock, const Limits& server_limits, std::function<void(Connection*)> on_gone)
      : socket(std::move(sock)),
        timer(socket.get_executor()),
        limits(server_limits),
        gone(std::move(on_gone)),
        parser(server_limits) {}

  asio::ip::tcp::socket socket;
  asio::steady_timer timer;
  Limits limits;
  std::function<void(Connection*)> gone;
  Handler handler;
  std::function<void(double)> on_answered;
  RequestParser parser;
  std::array<char, 8192> buffer{};
  Request request;
  bool complete = false;
  bool is_closed = false;
  bool is_answered = false;
  bool writing = false;
  std::string head;  // a streamed answer's headers, sent with the first piece
  std::vector<std::shared_ptr<void>> kept;
  Clock::time_point request_done;

  void start() {
    arm(limits.request_timeout);
    read();
  }

  void arm(std::chrono::milliseconds after) {
    timer.expires_after(after);
    timer.async_wait([weak = weak_from_this()](const std::error_code& ec) {
      auto c = weak.lock();
      if (!c || ec == asio::error::operation_aborted || c->is_closed) return;
      if (!c->complete && !c->is_answered) return c->refuse(408, "the request did not arrive in time");
      c->close();
    });
  }

  void read() {
    socket.async_read_some(asio::buffer(buffer),
                           [self = shared_from_this()](const std::error_code& ec, std::size_t length) {
                             if (self->is_closed) return;
                             if (ec) return self->close();
                             self->feed(length);
                           });
  }

  void feed(std::size_t length) {
    switch (parser.feed(buffer.data(), length)) {
      case RequestParser::State::incomplete:
        return read();
      case RequestParser::State::refused:
        return refuse(parser.refusal_status(), parser.refusal());
      case RequestParser::State::complete:
        return dispatch();
    }
  }

  void dispatch() {
    complete = true;
    request = parser.request();
    request_done = Clock::now();
    arm(limits.answer_timeout);
    auto exchange = shared_from_this();
    try {
      handler(request, exchange);
    } catch (const std::exception& e) {
      if (!is_answered) respond(error_response(500, e.what()));
    }
  }

  void refuse(int status, std::string_view message) {
    if (is_answered) return close();
    respond(error_response(status, message));
  }

  std::string make_head(int status, const std::string& content_type,
                        const std::vector<std::pair<std::string, std::string>>& headers, std::uint64_t length) {
    std::string out = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n"
        "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        status, status_text(status), content_type, length);
    for (const auto& [name, text] : headers) out += fmt::format("{}: {}\r\n", name, text);
    out += "\r\n";
    return out;
  }

  void answered_now() {
    is_answered = true;
    if (on_answered && complete) {
      on_answered(std::chrono::duration<double>(Clock::now() - request_done).count());
    }
  }

  // --- Exchange ------------------------------------------------------------
  void respond(Response response) override {
    if (is_closed || is_answered) return;
    answered_now();
    std::string bytes = make_head(response.status, response.content_type, response.headers, response.body.size());
    if (request.method != "HEAD") bytes += response.body;
    send(std::move(bytes), [self = shared_from_this()](bool) { self->close(); });
  }

  void begin(int status, std::string content_type, std::vector<std::pair<std::string, std::string>> headers,
             std::uint64_t content_length) override {
    if (is_closed || is_answered) return;
    answered_now();
    head = make_head(status, content_type, headers, content_length);
  }

  void write(std::string_view bytes, std::shared_ptr<const void> owner, std::function<void(bool ok)> written) override {
    if (is_closed || writing) {
      asio::post(socket.get_executor(), [written = std::move(written)] { written(false); });
      return;
    }
    writing = true;
    arm(limits.write_timeout);
    // The headers of a streamed answer go out with its first piece.
    auto head_bytes = std::make_shared<std::string>(std::exchange(head, {}));
    const std::array<asio::const_buffer, 2> buffers{asio::buffer(*head_bytes),
                                                    asio::buffer(bytes.data(), bytes.size())};
    asio::async_write(socket, buffers,
                      [self = shared_from_this(), head_bytes, owner = std::move(owner), written = std::move(written)](
                          const std::error_code& ec, std::size_t) { self->finish_write(ec, written); });
  }

  void finish_write(const std::error_code& ec, const std::function<void(bool)>& written) {
    writing = false;
    if (ec || is_closed) {
      close();
      return written(false);
    }
    arm(limits.answer_timeout);
    written(true);
  }

  void end() override {
    if (!head.empty()) {
      return send(std::exchange(head, {}), [self = shared_from_this()](bool) { self->close(); });
    }
    if (!writing) close();
  }

  bool closed() const override { return is_closed; }
  bool answered() const override { return is_answered; }
  void keep(std::shared_ptr<void> object) override { kept.push_back(std::move(object)); }

  void send(std::string bytes, std::function<void(bool)> written) {
    writing = true;
    arm(limits.write_timeout);
    auto data = std::make_shared<std::string>(std::move(bytes));
    asio::async_write(socket, asio::buffer(*data),
                      [self = shared_from_this(), data, written = std::move(written)](
                          const std::error_code& ec, std::size_t) { self->finish_write(ec, written); });
  }

  void close() {
    if (is_closed) return;
    is_closed = true;
    std::error_code ignored;
    timer.cancel();
    socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
    socket.close(ignored);
    kept.clear();
    if (gone) gone(this);
  }
};

}  // namespace

struct Server::Impl : std::enable_shared_from_this<Server::Impl> {
  Impl(asio::io_context& io_context, Limits server_limits, Handler server_handler)
      : io(io_context), acceptor(io), limits(server_limits), handler(std::move(server_handler)) {}
  asio::io_context& io;
  asio::ip::tcp::acceptor acceptor;
  Limits limits;
  Handler handler;
  std::function<void(double)> on_answered;
  std::set<std::shared_ptr<Connection>> connections;
  bool stopping = false;

  void on_accept(asio::ip::tcp::socket socket) {
    if (connections.size() >= limits.max_connections) {
      std::error_code ignored;
      socket.close(ignored);  // at the cap: refused at once, nothing spent
      return;
    }
    std::error_code ignored;
    socket.set_option(asio::ip::tcp::no_delay(true), ignored);
    auto connection =
        std::make_shared<Connection>(std::move(socket), limits, [weak = weak_from_this()](Connection* gone) {
          auto self = weak.lock();
          if (!self) return;
          auto it = std::find_if(self->connections.begin(), self->connections.end(),
                                 [gone](const auto& c) { return c.get() == gone; });
          if (it != self->connections.end()) {
            // Erased after the handler that closed it returns.
            asio::post(self->io, [keep = *it] {});
            self->connections.erase(it);
          }
        });
    connection->handler = handler;
    connection->on_answered = on_answered;
    connections.insert(connection);
    connection->start();
  }
};

Server::Server(asio::io_context& io, Limits limits, Handler handler)
    : impl_(std::make_shared<Impl>(io, limits, std::move(handler))) {}

Server::~Server() = default;

cli::Address Server::start(const cli::Address& address) {
  impl_->on_answered = on_answered;
  auto bound = listen_on(impl_->acceptor, address);
  accept_each(
      impl_->acceptor, [impl = impl_] { return impl->stopping; },
      [impl = impl_](asio::ip::tcp::socket socket) { impl->on_accept(std::move(socket)); });
  return bound;
}

void Server::stop() {
  impl_->stopping = true;
  std::error_code ignored;
  impl_->acceptor.close(ignored);
  auto connections = impl_->connections;
  for (const auto& c : connections) c->close();
}

std::size_t Server::connections() const {
  return impl_->connections.size();
}

}  // namespace p2pshare::http
