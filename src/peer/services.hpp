// What every swarm and link of a peer-server shares: the threads, the state,
// the central link, the rate limits and the chunk buffers.
//
// Threading: made and owned by the network thread (PeerServer); the buffer
// pool alone is used from any thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <asio.hpp>
#include <asio/ssl.hpp>

#include "p2pshare/metrics.hpp"
#include "p2pshare/rate.hpp"
#include "p2pshare/sched.hpp"
#include "p2pshare/store.hpp"
#include "p2pshare/types.hpp"
#include "peer/central_link.hpp"
#include "peer/state.hpp"

namespace p2pshare::peer {

// Chunk-sized buffers reused across chunks: no allocation per chunk in the
// steady state. Buffers return to the pool when the last owner drops them,
// from any thread.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // Page-aligned, so a received chunk can be written with O_DIRECT.
  using Buffer = std::shared_ptr<store::ChunkBytes>;
  Buffer acquire(std::size_t size);

 private:
  std::mutex mutex_;
  std::vector<std::unique_ptr<store::ChunkBytes>> free_;
};

// What /metrics counts on a peer-server (the gauges are read at scrape time).
struct PeerMetrics {
  metrics::Counter bytes_up;         // chunk payload bytes handed to other peers' sockets
  metrics::Counter bytes_down;       // chunk payload bytes read from other peers
  metrics::Counter chunks_verified;  // matched their hash and were written
  metrics::Counter chunks_failed;    // failed their hash
  metrics::Counter bans;             // peers banned from a download for bad chunks
  metrics::Histogram chunk_seconds;  // payload in -> hashed and written
  metrics::Histogram http_seconds;   // HTTP request in -> answer begun
};

struct Services {
  asio::io_context& io;
  asio::thread_pool& disk;
  PeerState& state;
  std::shared_ptr<CentralLink> central;
  std::shared_ptr<TokenBucket> upload;
  std::shared_ptr<TokenBucket> download;
  std::shared_ptr<BufferPool> buffers;
  PeerId self;
  sched::Config sched_config;
  std::size_t max_links_per_file = 50;
  std::chrono::milliseconds tick{250};
  std::chrono::milliseconds holder_refresh{2000};
  // Seeding (set by the server): the identity a shared file had when it was
  // hashed, for the reader to hold it to; and a chunk that could not be read
  // (file changed or gone) makes the server check the file at once.
  std::function<std::optional<store::FileIdentity>(const FileId&)> shared_identity{};
  std::function<void(const FileId&)> on_unreadable{};
  // TLS for the links we open: presents our certificate (peer plane).
  std::shared_ptr<asio::ssl::context> client_tls{};
  std::shared_ptr<PeerMetrics> metrics = std::make_shared<PeerMetrics>();
  // Accounts: the session token of the logged-in user (empty: nobody), sent
  // with the requests that act as that user; and the key hash of the
  // central server we trust, to check capabilities with offline.
  std::string session{};
  std::function<std::optional<tls::KeyHash>()> trusted_central{};
};

}  // namespace p2pshare::peer
