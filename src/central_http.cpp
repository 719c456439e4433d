#include "central_http.hpp"

#include <algorithm>
#include <chrono>

#include <nlohmann/json.hpp>

#include "p2pshare/dashboard.hpp"

namespace p2pshare::central {
namespace {

using nlohmann::json;

constexpr std::size_t kMaxFilesPerPage = 1000;

std::string dump(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json peer_json(const PeerRecord& peer) {
  return {{"peer_id", to_hex(peer.id)},
          {"host", peer.host},
          {"port", peer.port},
          {"last_seen_ms",
           std::chrono::duration_cast<std::chrono::milliseconds>(peer.last_seen.time_since_epoch()).count()}};
}

struct Router {
  std::shared_ptr<CentralHttpHost> host;

  void operator()(const http::Request& request, const std::shared_ptr<http::Exchange>& exchange) const {
    if (request.method != "GET" && request.method != "HEAD") {
      return exchange->respond(http::error_response(405, "this API is read-only: use GET"));
    }
    const auto& path = request.path;
    const auto now = std::chrono::system_clock::now();
    const Registry& registry = *host->registry;
    if (path == "/") return exchange->respond(dashboard::central_page());
    if (path == "/metrics") return exchange->respond(metrics());
    if (path == "/api/files") {
      std::optional<FileId> after;
      if (auto text = request.query_param("after")) {
        after = file_id_from_hex(*text);
        if (!after) return exchange->respond(http::error_response(400, "after must be a file id (64 hex digits)"));
      }
      auto files = registry.list_files(after, kMaxFilesPerPage + 1, now);
      const bool more = files.size() > kMaxFilesPerPage;
      if (more) files.resize(kMaxFilesPerPage);
      json list = json::array();
      for (const auto& f : files) {
        if (host->hidden(f.id)) continue;
        list.push_back(
            {{"file_id", to_hex(f.id)}, {"name", f.name}, {"size", f.size}, {"live_holders", f.live_holders}});
      }
      json page{{"files", std::move(list)}, {"more", more}};
      // The next page starts after the last file scanned, listed or not.
      if (more) page["resume_after"] = to_hex(files.back().id);
      return exchange->respond(http::json_response(200, dump(page)));
    }
    if (path == "/api/peers") {
      json list = json::array();
      for (const auto& peer : registry.live_peers(std::nullopt, now)) list.push_back(peer_json(peer));
      return exchange->respond(http::json_response(200, dump({{"peers", std::move(list)}})));
    }
    if (path.starts_with("/api/files/")) {
      auto id = file_id_from_hex(std::string_view(path).substr(11));
      if (!id) return exchange->respond(http::error_response(404, "the path must be /api/files/<64 hex digits>"));
      auto details = host->hidden(*id) ? std::nullopt : registry.file(*id, now);
      if (!details) return exchange->respond(http::error_response(404, "no such file"));
      return exchange->respond(http::json_response(200, dump(file_json(*id, *details))));
    }
    exchange->respond(http::error_response(404, "no such page"));
  }

  static json file_json(const FileId& id, const FileDetails& details) {
    const auto& manifest = details.manifest;
    // What file-info shows: how many live holders have each chunk.
    std::vector<std::uint32_t> copies(manifest.chunk_count(), 0);
    json holders = json::array();
    for (const auto& holder : details.live_holders) {
      auto entry = peer_json(holder.peer);
      entry["complete"] = !holder.partial.has_value();
      entry["chunks"] = holder.partial ? holder.partial->count() : manifest.chunk_count();
      holders.push_back(std::move(entry));
      for (std::uint32_t i = 0; i < copies.size(); ++i) {
        if (!holder.partial || holder.partial->test(ChunkIndex{i})) ++copies[i];
      }
    }
    return {{"file_id", to_hex(id)},
            {"name", manifest.name},
            {"names", details.names},
            {"size", manifest.size},
            {"chunk_size", manifest.chunk_size},
            {"chunks", manifest.chunk_count()},
            {"holders", std::move(holders)},
            {"chunk_copies", std::move(copies)},
            {"replicas", details.replicas}};
  }

  http::Response metrics() const {
    const auto& m = *host->metrics;
    const Registry& registry = *host->registry;
    metrics::MetricsText text;
    text.counter("p2pshare_central_requests_total", "Central-plane requests handled.", m.requests.value());
    text.counter("p2pshare_central_request_errors_total", "Central-plane requests answered with an error.",
                 m.request_errors.value());
    text.counter("p2pshare_central_registrations_total", "Peer registrations accepted.", m.registrations.value());
    text.counter("p2pshare_central_announces_total", "Announcements of a held file accepted.", m.announces.value());
    text.counter("p2pshare_central_withdrawals_total", "Withdrawals of a held file handled.", m.withdrawals.value());
    text.counter("p2pshare_central_change_log_reads_total",
                 "Reads of the changes other central servers on the same database made (every 100 ms, and on a "
                 "lookup that missed in memory).",
                 m.change_log_reads.value());
    text.counter("p2pshare_central_change_log_miss_reads_total",
                 "Change log reads forced by a lookup that missed in memory (at most one per 10 ms).",
                 m.change_log_miss_reads.value());
    text.counter("p2pshare_central_change_log_read_failures_total",
                 "Change log reads that failed (the database was away).", m.change_log_read_failures.value());
    text.counter("p2pshare_central_changes_applied_total", "Other central servers' changes applied to memory.",
                 m.changes_applied.value());
    text.gauge("p2pshare_registry_files", "Files in the registry.", static_cast<double>(registry.file_count()));
    text.gauge("p2pshare_registry_peers", "Peers in the registry.", static_cast<double>(registry.peer_count()));
    text.gauge("p2pshare_central_connections", "Central-plane connections open.",
               static_cast<double>(host->connections()));
    text.gauge("p2pshare_peers_connected", "Connections speaking for a registered peer.",
               static_cast<double>(host->registered_peers()));
    text.gauge("p2pshare_http_connections", "Open HTTP connections.", static_cast<double>(host->http_connections()));
    text.histogram("p2pshare_central_request_seconds", "Handling one central-plane request, before its commit.",
                   m.request_seconds);
    text.histogram("p2pshare_http_request_seconds", "HTTP requests' time from arrival to the answer's start.",
                   m.http_seconds);
    http::Response response;
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    response.body = text.text();
    return response;
  }
};

}  // namespace

http::Handler make_central_http_handler(std::shared_ptr<CentralHttpHost> host) {
  return Router{std::move(host)};
}

}  // namespace p2pshare::central
