// The central server's HTTP side (--http-addr): the dashboard at /,
// /metrics, and a read-only JSON API (/api/files, /api/peers,
// /api/files/ID). Everything here is what `list-files`, `list-peers` and
// `file-info` already show anyone, so no token is asked.
//
// Threading: network thread only (the Registry is touched there alone).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

#include "p2pshare/http.hpp"
#include "p2pshare/metrics.hpp"
#include "p2pshare/registry.hpp"

namespace p2pshare::central {

struct CentralMetrics {
  metrics::Counter requests;        // central-plane requests handled
  metrics::Counter request_errors;  // answered with an error
  metrics::Counter registrations;
  metrics::Counter announces;
  metrics::Counter withdrawals;
  // Several central servers on one database (shared stores only).
  metrics::Counter change_log_reads;          // reads of the others' changes, any cause
  metrics::Counter change_log_miss_reads;     // of those, forced by a lookup that missed in memory
  metrics::Counter change_log_read_failures;  // reads that failed (the store was away)
  metrics::Counter changes_applied;           // the others' changes applied to memory
  metrics::Histogram request_seconds;         // handling one central-plane request (before the group commit)
  metrics::Histogram http_seconds;
};

struct CentralHttpHost {
  const Registry* registry = nullptr;
  std::shared_ptr<CentralMetrics> metrics;
  std::function<std::size_t()> connections;       // central-plane connections open
  std::function<std::size_t()> registered_peers;  // connections speaking for a registered peer
  std::function<std::size_t()> http_connections;
  // A group's file (and never registered publicly): left out of /api/files
  // and unknown at /api/files/ID, as in the public list-files and file-info.
  std::function<bool(const FileId&)> hidden;
};

http::Handler make_central_http_handler(std::shared_ptr<CentralHttpHost> host);

}  // namespace p2pshare::central
