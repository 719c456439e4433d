#include "peer/http_api.hpp"

#include <algorithm>
#include <chrono>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "p2pshare/dashboard.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/metrics.hpp"
#include "peer/swarm.hpp"

namespace p2pshare::peer {
namespace {

using nlohmann::json;

// The gateway asks the scheduler for this many chunks ahead of the reader.
constexpr std::uint32_t kPriorityWindow = 32;
// Chunks read ahead of the socket (each a pooled chunk buffer).
constexpr std::size_t kReadAhead = 8;
// Verified chunks kept for the reader, at most, from where it reads on.
constexpr std::uint32_t kTapWindow = 16;
// How often a reader waiting for a chunk looks again, and how long it may
// wait for one chunk before the answer is cut short.
constexpr auto kChunkPoll = std::chrono::milliseconds(5);
constexpr auto kChunkWait = std::chrono::seconds(60);

std::string dump(const json& value) {
  // Names come from the network: invalid UTF-8 is replaced, never a throw.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

int http_status_of(Errc code) {
  switch (code) {
    case Errc::bad_request:
    case Errc::usage:
      return 400;
    case Errc::not_found:
    case Errc::no_holders:
      return 404;
    case Errc::unauthorized:
      return 403;
    case Errc::unavailable:
      return 503;
    case Errc::limit:
      return 429;
    case Errc::verification:
    case Errc::protocol:
      return 502;
    default:
      return 500;
  }
}

// The control handlers' answers, turned into one HTTP answer by `decide`:
// it gets each answer until it says the exchange is answered.
class ExchangeSink : public ControlSink {
 public:
  using Decide = std::function<bool(const pb::ControlResponse&, http::Exchange&)>;
  ExchangeSink(const std::shared_ptr<http::Exchange>& exchange, Decide decide)
      : exchange_(exchange), decide_(std::move(decide)) {}
  void send(std::string bytes) override {
    auto exchange = exchange_.lock();
    if (!exchange || done_) return;
    pb::ControlResponse response;
    if (!response.ParseFromString(bytes)) {
      exchange->respond(http::error_response(500, "unreadable control answer"));
      done_ = true;
      return;
    }
    done_ = decide_(response, *exchange);
  }
  bool closed() const override {
    auto exchange = exchange_.lock();
    return done_ || !exchange || exchange->closed();
  }
  std::size_t queued_bytes() const override { return 0; }

 private:
  std::weak_ptr<http::Exchange> exchange_;
  Decide decide_;
  bool done_ = false;
};

bool answer_error(const pb::ControlResponse& response, http::Exchange& exchange) {
  if (!response.has_error()) return false;
  exchange.respond(
      http::error_response(http_status_of(static_cast<Errc>(response.error().code())), response.error().message()));
  return true;
}

json swarm_json(const Swarm& swarm) {
  const auto& manifest = swarm.manifest();
  json links = json::array();
  for (const auto& link : swarm.links()) {
    links.push_back(
        {{"peer_id", to_hex(link->remote_id())}, {"downloaded", link->downloaded()}, {"uploaded", link->uploaded()}});
  }
  const bool seeding = swarm.complete() && !swarm.downloading();
  return {{"file_id", to_hex(swarm.id())},
          {"name", manifest.name},
          {"size", manifest.size},
          {"chunks", manifest.chunk_count()},
          {"path", swarm.path().string()},
          {"state", swarm.state_text()},
          {"seeding", seeding},
          {"have_bytes", swarm.have_bytes()},
          {"bytes_received", swarm.bytes_received()},
          {"uploaded", swarm.uploaded()},
          {"links", std::move(links)}};
}

struct Router {
  std::shared_ptr<PeerHttpHost> host;

  bool authorized(const http::Request& request) const {
    std::string given;
    if (auto header = request.header("authorization"); header && header->starts_with("Bearer ")) {
      given = header->substr(7);
    } else if (auto token = request.query_param("token")) {
      given = *token;
    }
    const auto& cookie = host->cookie;
    // Compared in constant time; the length is no secret (always 64).
    return given.size() == cookie.size() &&
           constant_time_equal(std::span(reinterpret_cast<const std::uint8_t*>(given.data()), given.size()),
                               std::span(reinterpret_cast<const std::uint8_t*>(cookie.data()), cookie.size()));
  }

  void operator()(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const {
    if (!authorized(request)) {
      auto response = http::error_response(
          401, "not authorized: send the 64 hex digits of control.cookie as a Bearer token or ?token=");
      response.headers.emplace_back("WWW-Authenticate", "Bearer");
      return exchange->respond(std::move(response));
    }
    const auto& path = request.path;
    const bool get = request.method == "GET" || request.method == "HEAD";
    if (path == "/" && get) return exchange->respond(dashboard::peer_page());
    if (path == "/metrics" && get) return exchange->respond(metrics());
    if (path == "/api/status" && get) return exchange->respond(http::json_response(200, dump(status())));
    if (path.starts_with("/files/") && get) return gateway(request, exchange);
    if (path == "/api/register" || path == "/api/request" || path == "/api/stop") {
      if (request.method != "POST") return exchange->respond(http::error_response(405, "use POST"));
      json body;
      try {
        body = json::parse(request.body);
        if (!body.is_object()) throw std::invalid_argument("not an object");
      } catch (const std::exception&) {
        return exchange->respond(http::error_response(400, "the body must be a JSON object"));
      }
      try {
        if (path == "/api/register") return register_file(body, exchange);
        if (path == "/api/request") return request_file(body, exchange);
        return stop_sharing(body, exchange);
      } catch (const json::exception&) {
        return exchange->respond(http::error_response(400, "a field has the wrong type"));
      }
    }
    exchange->respond(http::error_response(404, "no such page"));
  }

  json status() const {
    json shared = json::array();
    json downloads = json::array();
    for (const auto& swarm : host->swarms()) {
      auto entry = swarm_json(*swarm);
      (entry["seeding"].get<bool>() ? shared : downloads).push_back(std::move(entry));
    }
    const auto& m = *host->services->metrics;
    return {{"peer_id", to_hex(host->services->self)},
            {"listen_addr", host->listen_address()},
            {"central_connected", host->services->central->registered()},
            {"central_addr", host->services->central->address().to_string()},
            {"cache_limit", host->cache_limit},
            {"cache_used", host->cache_used()},
            {"bytes_up", m.bytes_up.value()},
            {"bytes_down", m.bytes_down.value()},
            {"shared", std::move(shared)},
            {"downloads", std::move(downloads)}};
  }

  http::Response metrics() const {
    const auto& m = *host->services->metrics;
    std::size_t links = 0;
    std::size_t downloading = 0;
    std::size_t shared = 0;
    for (const auto& swarm : host->swarms()) {
      links += swarm->link_count();
      if (swarm->state() == SwarmState::downloading || swarm->state() == SwarmState::verifying ||
          swarm->state() == SwarmState::finishing) {
        ++downloading;
      }
      if (swarm->complete() && !swarm->downloading()) ++shared;
    }
    metrics::MetricsText text;
    text.counter("p2pshare_bytes_up_total", "Chunk payload bytes sent to other peers.", m.bytes_up.value());
    text.counter("p2pshare_bytes_down_total", "Chunk payload bytes received from other peers.", m.bytes_down.value());
    text.counter("p2pshare_chunks_verified_total", "Chunks that matched their hash and were written.",
                 m.chunks_verified.value());
    text.counter("p2pshare_chunks_failed_total", "Chunks that failed their hash.", m.chunks_failed.value());
    text.counter("p2pshare_bans_total", "Peers banned from a download for sending bad chunks.", m.bans.value());
    text.gauge("p2pshare_links", "Peer links past the handshake, over every file.", static_cast<double>(links));
    text.gauge("p2pshare_downloads_active", "Downloads verifying, fetching or finishing.",
               static_cast<double>(downloading));
    text.gauge("p2pshare_shared_files", "Files this peer holds whole and serves.", static_cast<double>(shared));
    text.gauge("p2pshare_central_connected", "1 while registered with the central server.",
               host->services->central->registered() ? 1 : 0);
    text.gauge("p2pshare_http_connections", "Open HTTP connections.", static_cast<double>(host->http_connections()));
    text.histogram("p2pshare_chunk_write_seconds", "A received chunk's time from payload to hashed and written.",
                   m.chunk_seconds);
    text.histogram("p2pshare_http_request_seconds", "HTTP requests' time from arrival to the answer's start.",
                   m.http_seconds);
    http::Response response;
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    response.body = text.text();
    return response;
  }

  static std::optional<FileId> id_field(const json& body) {
    if (!body.contains("file_id") || !body["file_id"].is_string()) return std::nullopt;
    return file_id_from_hex(body["file_id"].get<std::string>());
  }

  void register_file(const json& body, const std::shared_ptr<http::Exchange>& exchange) const {
    if (!body.contains("path") || !body["path"].is_string()) {
      return exchange->respond(http::error_response(400, "register needs {\"path\": \"/absolute/file\"}"));
    }
    pb::ControlRequest request;
    request.mutable_register_file()->set_path(body["path"].get<std::string>());
    run(request, exchange, [](const pb::ControlResponse& response, http::Exchange& ex) {
      if (answer_error(response, ex)) return true;
      if (!response.has_registered()) return false;
      const auto& r = response.registered();
      ex.respond(http::json_response(
          200, dump({{"file_id", file_id_from_bytes(r.file_id()) ? to_hex(*file_id_from_bytes(r.file_id())) : ""},
                     {"name", r.name()},
                     {"size", r.size()},
                     {"chunk_size", r.chunk_size()},
                     {"chunks", r.chunks()}})));
      return true;
    });
  }

  void request_file(const json& body, const std::shared_ptr<http::Exchange>& exchange) const {
    auto id = id_field(body);
    if (!id) return exchange->respond(http::error_response(400, "request needs {\"file_id\": \"64 hex digits\"}"));
    pb::ControlRequest request;
    request.mutable_request_file()->set_file_id(to_bytes(*id));
    if (body.contains("out")) request.mutable_request_file()->set_out_path(body["out"].get<std::string>());
    const std::string hex = to_hex(*id);
    // Answered as soon as it is known: 200 when the file is here, 202 once
    // the download runs (its progress is in /api/status), or the error.
    run(request, exchange, [hex](const pb::ControlResponse& response, http::Exchange& ex) {
      if (answer_error(response, ex)) return true;
      if (response.has_downloaded()) {
        ex.respond(http::json_response(200, dump({{"file_id", hex},
                                                  {"state", "complete"},
                                                  {"path", response.downloaded().path()},
                                                  {"size", response.downloaded().size()}})));
        return true;
      }
      if (response.has_progress()) {
        ex.respond(http::json_response(202, dump({{"file_id", hex},
                                                  {"state", "downloading"},
                                                  {"have_bytes", response.progress().have_bytes()},
                                                  {"size", response.progress().size()}})));
        return true;
      }
      return false;
    });
  }

  void stop_sharing(const json& body, const std::shared_ptr<http::Exchange>& exchange) const {
    auto id = id_field(body);
    if (!id) return exchange->respond(http::error_response(400, "stop needs {\"file_id\": \"64 hex digits\"}"));
    pb::ControlRequest request;
    request.mutable_stop_sharing()->set_file_id(to_bytes(*id));
    run(request, exchange, [hex = to_hex(*id)](const pb::ControlResponse& response, http::Exchange& ex) {
      if (answer_error(response, ex)) return true;
      ex.respond(http::json_response(200, dump({{"file_id", hex}, {"state", "stopped"}})));
      return true;
    });
  }

  void run(const pb::ControlRequest& request, const std::shared_ptr<http::Exchange>& exchange,
           ExchangeSink::Decide decide) const {
    auto sink = std::make_shared<ExchangeSink>(exchange, std::move(decide));
    exchange->keep(sink);
    host->control(sink, request);
  }

  void gateway(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const;
};

// One GET /files/ID: waits for the file's swarm (started through the
// request-file handler when this peer lacks the file), then sends each chunk
// of the range once it is verified, asking the scheduler for the chunks
// ahead of the reader first. One chunk is read ahead while the previous one
// is written, and the pooled buffer is written as it is (no copy).
struct Gateway : std::enable_shared_from_this<Gateway> {
  Gateway(const std::shared_ptr<PeerHttpHost>& peer_host, const std::shared_ptr<http::Exchange>& ex, FileId file)
      : host(peer_host), exchange(ex), id(file), timer(peer_host->services->io) {}

  // The part of a read chunk that the range needs.
  struct Slice {
    BufferPool::Buffer buffer;
    std::size_t from = 0;
    std::size_t length = 0;
  };

  std::shared_ptr<PeerHttpHost> host;
  std::weak_ptr<http::Exchange> exchange;
  FileId id;
  asio::steady_timer timer;
  std::optional<std::string> range_header;
  bool head_only = false;
  std::optional<std::string> failure;    // the request-file handler's error, before the swarm existed
  std::uint64_t read_position = 0;       // the next byte to read
  std::uint64_t write_position = 0;      // the next byte to write
  std::uint64_t last = 0;                // inclusive
  std::map<std::uint64_t, Slice> ready;  // read, not yet written, by their first byte
  // Chunks the download verified just now (Swarm::add_chunk_tap), kept if
  // the reader will need them soon: no read back from the disk.
  std::map<std::uint32_t, BufferPool::Buffer> tapped;
  bool tapping = false;
  std::size_t reads_in_flight = 0;
  bool writing = false;
  bool polling = false;
  bool failed = false;
  bool pumping = false;
  bool pump_again = false;
  std::chrono::steady_clock::time_point waiting_since = std::chrono::steady_clock::now();

  void wait_for_swarm() {
    auto ex = exchange.lock();
    if (!ex || ex->closed()) return;
    if (failure) return ex->respond(http::error_response(404, *failure));
    auto swarm = host->lookup(id);
    if (swarm) return begin(*swarm, *ex);
    later([](Gateway& self) { self.wait_for_swarm(); });
  }

  void later(void (*next)(Gateway&)) {
    if (std::chrono::steady_clock::now() - waiting_since > kChunkWait) {
      if (auto ex = exchange.lock()) {
        if (!ex->answered()) ex->respond(http::error_response(504, "no peer delivered the file in time"));
        ex->end();
      }
      return;
    }
    polling = true;
    timer.expires_after(kChunkPoll);
    timer.async_wait([weak = weak_from_this(), next](const std::error_code& ec) {
      auto self = weak.lock();
      if (!self) return;
      self->polling = false;
      if (!ec) next(*self);
    });
  }

  void begin(Swarm& swarm, http::Exchange& ex) {
    const std::uint64_t size = swarm.manifest().size;
    const std::string etag = fmt::format("\"{}\"", to_hex(id));
    std::vector<std::pair<std::string, std::string>> headers{{"ETag", etag}, {"Accept-Ranges", "bytes"}};
    int status = 200;
    read_position = write_position = 0;
    last = size == 0 ? 0 : size - 1;
    if (range_header) {
      auto range = http::parse_range(*range_header, size);
      if (!range) {
        http::Response refused = http::error_response(416, "the Range header is malformed or outside the file");
        refused.headers.emplace_back("Content-Range", fmt::format("bytes */{}", size));
        return ex.respond(std::move(refused));
      }
      status = 206;
      read_position = write_position = range->first;
      last = range->last;
      headers.emplace_back("Content-Range", fmt::format("bytes {}-{}/{}", read_position, last, size));
    }
    const std::uint64_t length = size == 0 ? 0 : last - read_position + 1;
    ex.begin(status, "application/octet-stream", std::move(headers), length);
    if (length == 0 || head_only) return ex.end();
    waiting_since = std::chrono::steady_clock::now();
    if (swarm.downloading() && !tapping) {
      tapping = true;
      swarm.add_chunk_tap([weak = weak_from_this(), chunk_size = swarm.manifest().chunk_size](
                              ChunkIndex chunk, const BufferPool::Buffer& buffer) {
        auto self = weak.lock();
        if (!self) return false;
        const std::uint64_t next = self->read_position / chunk_size;
        if (chunk.value >= next && chunk.value < next + kTapWindow && self->tapped.size() < kTapWindow) {
          self->tapped.emplace(chunk.value, buffer);
          self->pump();
        }
        return self->read_position <= self->last;
      });
    }
    pump();
  }

  // Re-entrant calls (a read answered at once from the page cache) run the
  // loop again instead of nesting.
  void pump() {
    if (pumping) {
      pump_again = true;
      return;
    }
    pumping = true;
    do {
      pump_again = false;
      step();
    } while (pump_again);
    pumping = false;
  }

  void step() {
    auto ex = exchange.lock();
    if (!ex || ex->closed()) return;
    if (!writing && !failed) {
      if (auto it = ready.find(write_position); it != ready.end()) {
        Slice slice = std::move(it->second);
        ready.erase(it);
        write_position += slice.length;
        writing = true;
        const std::string_view bytes(reinterpret_cast<const char*>(slice.buffer->data()) + slice.from, slice.length);
        ex->write(bytes, slice.buffer, [weak = weak_from_this()](bool ok) {
          auto self = weak.lock();
          if (!self) return;
          self->writing = false;
          if (ok) self->pump();
        });
      }
    }
    while (!failed && reads_in_flight + ready.size() < kReadAhead && read_position <= last) {
      if (!read_next()) break;
    }
    // Done, or cut short (the length promised cannot be kept: the client
    // sees a short body).
    if (!writing && reads_in_flight == 0 && (failed || write_position > last)) ex->end();
  }

  // Starts reading the chunk at read_position; false when it is not here yet
  // (then it is asked for first, and looked at again shortly).
  bool read_next() {
    auto swarm = host->lookup(id);
    if (!swarm || swarm->state() == SwarmState::failed || swarm->state() == SwarmState::stopped) {
      failed = true;
      return false;
    }
    const auto& manifest = swarm->manifest();
    const ChunkIndex chunk{static_cast<std::uint32_t>(read_position / manifest.chunk_size)};
    if (!swarm->have().test(chunk)) {
      swarm->prioritize(chunk, ChunkIndex{chunk.value + kPriorityWindow});
      if (!polling) later([](Gateway& self) { self.pump(); });
      return false;
    }
    const std::uint64_t offset = manifest.chunk_offset(chunk);
    const std::uint64_t first = read_position;
    const std::uint64_t until = std::min<std::uint64_t>(offset + manifest.chunk_length(chunk), last + 1);
    read_position = until;
    // Drop what the reader has passed; take this chunk from the tap if it is there.
    tapped.erase(tapped.begin(), tapped.lower_bound(chunk.value));
    if (auto it = tapped.find(chunk.value); it != tapped.end()) {
      ready.emplace(
          first, Slice{it->second, static_cast<std::size_t>(first - offset), static_cast<std::size_t>(until - first)});
      tapped.erase(it);
      return true;
    }
    ++reads_in_flight;
    swarm->read_chunk(chunk, [weak = weak_from_this(), offset, first, until](
                                 const BufferPool::Buffer& buffer, const std::optional<Failure>& read_failure) {
      auto self = weak.lock();
      if (!self) return;
      --self->reads_in_flight;
      if (read_failure) {
        self->failed = true;
      } else {
        self->ready.emplace(
            first, Slice{buffer, static_cast<std::size_t>(first - offset), static_cast<std::size_t>(until - first)});
        self->waiting_since = std::chrono::steady_clock::now();
      }
      self->pump();
    });
    return true;
  }
};

void Router::gateway(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const {
  // Only /files/<64 hex digits>: the id is looked up, never made into a path.
  auto id = file_id_from_hex(std::string_view(request.path).substr(7));
  if (!id) return exchange->respond(http::error_response(404, "the path must be /files/<64 hex digits of a file id>"));
  auto gateway = std::make_shared<Gateway>(host, exchange, *id);
  gateway->range_header = request.header("range");
  gateway->head_only = request.method == "HEAD";
  exchange->keep(gateway);
  auto swarm = host->lookup(*id);
  if (!swarm || !(swarm->complete() && !swarm->downloading())) {
    // Fetched (or resumed) like request-file does; the first error, if any,
    // becomes the answer. Progress is not ours to answer.
    pb::ControlRequest start;
    start.mutable_request_file()->set_file_id(to_bytes(*id));
    std::weak_ptr<Gateway> weak = gateway;
    auto sink = std::make_shared<ExchangeSink>(exchange, [weak](const pb::ControlResponse& response, http::Exchange&) {
      auto self = weak.lock();
      if (self && response.has_error()) self->failure = response.error().message();
      return response.has_error() || response.has_downloaded();
    });
    exchange->keep(sink);
    host->control(sink, start);
  }
  gateway->wait_for_swarm();
}

}  // namespace

http::Handler make_peer_http_handler(std::shared_ptr<PeerHttpHost> host) {
  return Router{std::move(host)};
}

}  // namespace p2pshare::peer
