#include "p2pshare/central_server.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <system_error>

#include <fmt/format.h>

#include <sodium.h>

#include "central.pb.h"
#include "central_http.hpp"
#include "p2pshare/account_store.hpp"
#include "p2pshare/accounts.hpp"
#include "p2pshare/db.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/listen.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/registry.hpp"
#include "p2pshare/replicas.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/wire.hpp"

namespace p2pshare::central {
namespace {

constexpr std::uint32_t kMaxPageSize = 1000;
constexpr std::size_t kMaxHoldersPerAnswer = 200;
// Rows one forgetting step may delete before the waiting requests run: a
// step of 500 took a median 4 ms on the test machine, one of 2,000 took 14.
constexpr std::size_t kForgetBatchRows = 500;
// Several central servers on one PostgreSQL: the longest a change made through
// another one takes to show in list_files here (a read that misses catches up
// at once).
constexpr std::chrono::milliseconds kSyncInterval{100};
// A read that misses catches up at most this often: each catch-up commits the
// open batch and asks the database, so a stream of requests for unknown ids
// must not turn group commit into a commit per request.
constexpr std::chrono::milliseconds kMissCatchUpInterval{10};
// Password guesses: the first 5 failures for a user name or an address are
// free (typos), then each waits twice as long, up to 15 minutes. 4,096
// keys each: a few hundred KiB at most, whatever an attacker sends.
constexpr std::size_t kThrottleKeys = 4096;
constexpr std::uint32_t kFreeFailures = 5;
constexpr std::chrono::milliseconds kThrottleBase{1000};
constexpr std::chrono::milliseconds kThrottleMax{15 * 60 * 1000};
constexpr int kMaxAnnounceGroups = 8;
constexpr int kMaxGaveUp = 64;
constexpr const char* kWrongLogin = "wrong user or password";
constexpr const char* kStoreUnavailable = "the central server's database is unavailable; retry later";

std::string observed_host(const asio::ip::tcp::endpoint& endpoint) {
  auto address = endpoint.address();
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
  }
  return address.to_string();
}

// Whose bucket a new identity comes out of (Limits::new_peers_per_minute): an
// IPv4 address, or a whole IPv6 /64, the block one host usually gets, so
// walking through its own addresses buys an attacker nothing.
std::string registration_source(const asio::ip::tcp::endpoint& endpoint) {
  const auto address = endpoint.address();
  if (!address.is_v6() || address.to_v6().is_v4_mapped()) return observed_host(endpoint);
  auto bytes = address.to_v6().to_bytes();
  std::fill(bytes.begin() + 8, bytes.end(), 0);
  return asio::ip::make_address_v6(bytes).to_string() + "/64";
}

// Assigns into the entry's strings (no temporaries): a reused entry
// (CentralServer::Impl::spare_*) keeps its buffers, so this allocates nothing.
void fill_peer(const PeerRecord& peer, pb::PeerEntry* entry) {
  entry->mutable_peer_id()->assign(reinterpret_cast<const char*>(peer.id.bytes.data()), peer.id.bytes.size());
  entry->mutable_host()->assign(peer.host);
  entry->set_port(peer.port);
  entry->set_last_seen_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(peer.last_seen.time_since_epoch()).count());
}

// The data dir holds the key pair whatever the store: made here, as the
// SQLite store made it before there was another.
Registry open_registry(const ServerConfig& config) {
  std::error_code error;
  std::filesystem::create_directories(config.data_dir, error);
  if (error) {
    throw Error(Errc::io, fmt::format("central: creating {} failed: {}", config.data_dir.string(), error.message()));
  }
  return Registry(db::parse_location(config.store, config.data_dir, "registry.db"), config.heartbeat_interval * 3,
                  config.limits);
}

}  // namespace

struct Session {
  std::shared_ptr<wire::Connection> connection;
  bool hello_done = false;
  std::optional<PeerId> peer;
  std::size_t unacked = 0;  // its answers waiting for the group commit
};

// An answer held back until the registry's pending writes are committed.
struct HeldAnswer {
  std::weak_ptr<Session> session;
  std::uint64_t request_id = 0;
  std::string bytes;
  std::optional<std::string> close_reason;  // send, then close
  bool error = false;                       // an error answer: no writes of its own to lose
  // Registry::abandoned_batches() when it was held: if more are rolled back
  // by the time it is sent, the writes it tells of may be gone.
  std::uint64_t abandoned_before = 0;
};

struct CentralServer::Impl : std::enable_shared_from_this<CentralServer::Impl> {
  Impl(asio::io_context& io_context, ServerConfig cfg)
      : io(io_context),
        config(std::move(cfg)),
        acceptor(io),
        flush_timer(io),
        sync_timer(io),
        registry(open_registry(config)),
        identity(tls::load_or_create_identity(config.data_dir, false)),
        context(tls::make_context(tls::Side::server, &identity)),
        accounts(registry),
        hash_pool(std::max(1U, config.hash_threads)),
        failures_by_user(kThrottleKeys, kFreeFailures, kThrottleBase, kThrottleMax),
        failures_by_address(kThrottleKeys, kFreeFailures, kThrottleBase, kThrottleMax) {
    accounts::init_sodium();
  }

  asio::io_context& io;
  ServerConfig config;
  asio::ip::tcp::acceptor acceptor;
  asio::steady_timer flush_timer;
  // Several central servers on one PostgreSQL: how often the others'
  // changes are read into memory (Registry::sync).
  asio::steady_timer sync_timer;
  bool sync_failing = false;  // logged once per outage, not every tick
  std::chrono::steady_clock::time_point last_catch_up{};
  Registry registry;
  tls::Identity identity;
  std::shared_ptr<asio::ssl::context> context;
  AccountStore accounts;
  // Password hashing runs here, never on the network thread.
  asio::thread_pool hash_pool;
  std::size_t hashes_queued = 0;
  accounts::Throttle failures_by_user;
  accounts::Throttle failures_by_address;
  std::set<std::shared_ptr<Session>> sessions;
  std::map<PeerId, std::weak_ptr<Session>> bound;  // who speaks for each peer id now
  // Group commit: answers given while registry writes are uncommitted wait
  // here, in order, for the commit that runs after the ready requests.
  std::vector<HeldAnswer> held;
  // Reused answer bodies for ListPeers and GetFile. A cleared protobuf
  // message keeps its repeated elements and string buffers, so answers that
  // list hundreds of holders allocate (and free) almost nothing; building
  // them new each time spent half the mixed load's CPU in malloc.
  std::unique_ptr<pb::PeerList> spare_peer_list = std::make_unique<pb::PeerList>();
  std::unique_ptr<pb::FileRecord> spare_file = std::make_unique<pb::FileRecord>();
  bool commit_posted = false;
  bool stopping = false;
  std::shared_ptr<CentralMetrics> metrics = std::make_shared<CentralMetrics>();
  std::unique_ptr<http::Server> http_server;
  std::optional<cli::Address> http_bound;
  // Replicas and volunteer caches: targets mirrored from the registry, the
  // rest soft state.
  // One owner's targets cost target x chunks of --max-chunks-per-peer.
  ReplicaPlanner replicas{[this] {
    ReplicaConfig replica_config = config.replicas;
    replica_config.max_chunks_per_owner = config.limits.max_chunks_per_peer;
    return replica_config;
  }()};
  bool replicas_loaded = [this] {
    for (const auto& [file, target] : registry.replica_targets()) replicas.load(file, target);
    return true;
  }();

  ReplicaPlanner::View replica_view(std::chrono::system_clock::time_point now) const {
    return ReplicaPlanner::View{[this, now](const PeerId& peer) { return registry.peer_live(peer, now); },
                                [this, now](const FileId& file) { return registry.replica_facts(file, now); }};
  }

  void start_http() {
    auto host = std::make_shared<CentralHttpHost>();
    host->registry = &registry;
    host->metrics = metrics;
    std::weak_ptr<Impl> weak = weak_from_this();
    host->connections = [weak] {
      auto self = weak.lock();
      return self ? self->sessions.size() : 0;
    };
    host->registered_peers = [weak] {
      auto self = weak.lock();
      return self ? self->bound.size() : 0;
    };
    host->http_connections = [weak] {
      auto self = weak.lock();
      return self && self->http_server ? self->http_server->connections() : 0;
    };
    host->hidden = [weak](const FileId& id) {
      auto self = weak.lock();
      return !self || self->accounts.hidden(id);
    };
    http_server = std::make_unique<http::Server>(io, http::Limits{}, make_central_http_handler(host));
    http_server->on_answered = [m = metrics](double seconds) { m->http_seconds.observe(seconds); };
    http_bound = http_server->start(*config.http);
  }

  void accept() {
    accept_each(
        acceptor, [self = shared_from_this()] { return self->stopping; },
        [self = shared_from_this()](asio::ip::tcp::socket socket) { self->on_accept(std::move(socket)); });
  }

  void on_accept(asio::ip::tcp::socket socket) {
    if (sessions.size() >= config.max_connections) {
      std::error_code ignored;
      socket.close(ignored);  // at the cap: refuse at once, spend nothing
      return;
    }
    wire::tune_socket(socket);
    wire::ConnectionOptions options;
    options.limits = protocol::kHelloLimits;
    options.timeouts.first_frame = std::chrono::seconds(10);
    // A registered peer heartbeats; anyone else asks and goes.
    options.timeouts.idle =
        std::max<std::chrono::milliseconds>(config.heartbeat_interval * 4, std::chrono::seconds(30));
    options.max_queued_bytes = std::size_t{32} * 1024 * 1024;
    auto session = std::make_shared<Session>();
    session->connection = wire::Connection::create(std::move(socket), *context, tls::Side::server, options);
    sessions.insert(session);
    std::weak_ptr<Session> weak = session;
    session->connection->start(
        [self = shared_from_this(), weak](std::string_view message, std::uint32_t) {
          if (auto s = weak.lock()) self->on_frame(s, message);
        },
        [self = shared_from_this(), weak](const std::string&) {
          if (auto s = weak.lock()) self->on_close(s);
        });
  }

  void on_close(const std::shared_ptr<Session>& session) {
    if (session->peer) {
      auto it = bound.find(*session->peer);
      if (it != bound.end() && it->second.lock() == session) {
        bound.erase(it);
        replicas.disconnected(*session->peer);
      }
    }
    sessions.erase(session);
  }

  pb::PeerList* lend_peer_list(pb::CentralResponse& response) {
    pb::PeerList* list = spare_peer_list ? spare_peer_list.release() : new pb::PeerList;
    list->Clear();
    response.set_allocated_peer_list(list);
    return list;
  }

  pb::FileRecord* lend_file(pb::CentralResponse& response) {
    pb::FileRecord* file = spare_file ? spare_file.release() : new pb::FileRecord;
    file->Clear();
    response.set_allocated_file(file);
    return file;
  }

  // Takes the lent body back once the answer is serialized (or abandoned).
  // One that grew large (a manifest of many chunks, long bitfields) is
  // dropped rather than kept for the server's life.
  void take_back(pb::CentralResponse& response) {
    constexpr std::size_t kKeepBytes = std::size_t{64} * 1024;
    if (response.has_peer_list()) {
      spare_peer_list.reset(response.release_peer_list());
    } else if (response.has_file()) {
      std::unique_ptr<pb::FileRecord> file(response.release_file());
      std::size_t bytes = file->manifest().chunk_hashes().capacity();
      for (const auto& holder : file->holders()) bytes += holder.bitfield().capacity();
      if (bytes <= kKeepBytes) spare_file = std::move(file);
    }
  }

  void on_frame(const std::shared_ptr<Session>& session, std::string_view message) {
    if (!session->hello_done) {
      try {
        const auto hello = protocol::parse_hello(message);
        if (hello.plane() != pb::PLANE_CENTRAL) throw Error(Errc::protocol, "this is a central server");
      } catch (const Error& e) {
        reply_error(session, 0, e.code(), e.what(), true);
        return;
      }
      session->hello_done = true;
      session->connection->set_limits(protocol::kCentralRequestLimits);
      return;
    }
    pb::CentralRequest request;
    if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
      reply_error(session, 0, Errc::protocol, "malformed request", true);
      return;
    }
    if (request.has_create_user() || request.has_login()) {
      password_request(session, request);
      return;
    }
    pb::CentralResponse response;
    struct TakeBack {
      Impl& impl;
      pb::CentralResponse& response;
      ~TakeBack() { impl.take_back(response); }
    } take_back_body{*this, response};
    response.set_request_id(request.request_id());
    metrics->requests.add();
    const auto started = std::chrono::steady_clock::now();
    const auto observe = [&] {
      metrics->request_seconds.observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    };
    try {
      handle(session, request, response);
      observe();
    } catch (const db::Unavailable& e) {
      observe();
      metrics->request_errors.add();
      reply_store_unavailable(session, request.request_id(), e);
      return;
    } catch (const Error& e) {
      observe();
      metrics->request_errors.add();
      // A bad request gets an error answer; the connection stays unless the
      // peer broke the protocol itself.
      reply_error(session, request.request_id(), e.code(), e.what(), e.code() == Errc::protocol);
      return;
    } catch (const std::exception& e) {
      observe();
      metrics->request_errors.add();
      log::error("central: request failed: {}", e.what());
      reply_error(session, request.request_id(), Errc::unavailable, "internal error", false);
      return;
    }
    answer(session, request.request_id(), response.SerializeAsString(), std::nullopt);
  }

  // The database is away: the client hears that, not where the database is.
  void reply_store_unavailable(const std::shared_ptr<Session>& session, std::uint64_t request_id,
                               const db::Unavailable& e) {
    log::warn("central: {}", e.what());
    reply_error(session, request_id, Errc::unavailable, kStoreUnavailable, false);
  }

  void reply_error(const std::shared_ptr<Session>& session, std::uint64_t request_id, Errc code,
                   const std::string& text, bool close) {
    pb::CentralResponse response;
    response.set_request_id(request_id);
    *response.mutable_error() = protocol::make_error(static_cast<int>(code), text);
    answer(session, request_id, response.SerializeAsString(), close ? std::optional<std::string>(text) : std::nullopt,
           true);
  }

  // Sends an answer now, or holds it until the pending registry writes are
  // committed: no answer may tell of a state that is not stored yet, and a
  // session's answers keep their order.
  void answer(const std::shared_ptr<Session>& session, std::uint64_t request_id, std::string bytes,
              std::optional<std::string> close_reason, bool error = false) {
    if (registry.has_uncommitted() || session->unacked > 0) {
      ++session->unacked;
      held.push_back(HeldAnswer{session, request_id, std::move(bytes), std::move(close_reason), error,
                                registry.abandoned_batches()});
      post_commit();
      return;
    }
    send(*session, std::move(bytes), close_reason);
  }

  static void send(Session& session, std::string bytes, const std::optional<std::string>& close_reason) {
    if (close_reason) {
      session.connection->send_and_close(std::move(bytes), *close_reason);
    } else {
      session.connection->send(std::move(bytes));
    }
  }

  // The commit runs after the handlers that are ready now (asio runs posted
  // work after the completions already queued), so one commit serves every
  // request that arrived together.
  void post_commit() {
    if (commit_posted) return;
    commit_posted = true;
    asio::post(io, [self = shared_from_this()] { self->commit(); });
  }

  // with_heartbeats: also writes the heartbeats kept in memory.
  void commit(bool with_heartbeats = false) {
    commit_posted = false;
    bool stored = true;
    try {
      if (with_heartbeats) {
        registry.flush_last_seen();
      } else {
        registry.commit();
      }
    } catch (const std::exception& e) {
      // The registry rolled memory back to the last commit: every held
      // answer may describe what is gone, so each becomes an error.
      log::error("central: {}", e.what());
      stored = false;
    }
    auto answers = std::move(held);
    held.clear();
    const std::uint64_t abandoned = registry.abandoned_batches();
    for (auto& a : answers) {
      auto session = a.session.lock();
      if (!session) continue;
      --session->unacked;
      // A batch rolled back since it was held (another request's write
      // failed) took this answer's writes with it: commit() above had
      // nothing left to fail, so only the count tells.
      if (!stored || (!a.error && a.abandoned_before != abandoned)) {
        pb::CentralResponse error;
        error.set_request_id(a.request_id);
        *error.mutable_error() =
            protocol::make_error(static_cast<int>(Errc::unavailable), "the registry could not store this; retry");
        a.bytes = error.SerializeAsString();
      }
      send(*session, std::move(a.bytes), a.close_reason);
    }
  }

  accounts::PasswordCost password_cost() const { return {config.password_opslimit, config.password_memlimit}; }

  // CreateUser and Login: the Argon2id work runs on hash_pool (at most
  // hash_threads at once, so at most that many x memlimit of memory), then
  // the answer is made back on this thread. An unknown user costs one
  // verification against a dummy hash, like a wrong password.
  void password_request(const std::shared_ptr<Session>& session, const pb::CentralRequest& request) {
    const bool login = request.has_login();
    const std::uint64_t id = request.request_id();
    const std::string user = login ? request.login().user() : request.create_user().user();
    auto password =
        std::make_shared<std::string>(login ? request.login().password() : request.create_user().password());
    const std::string address = registration_source(session->connection->remote());
    const auto now = std::chrono::steady_clock::now();
    if (auto error = accounts::name_error("user", user))
      return reply_error(session, id, Errc::bad_request, *error, false);
    if (password->size() < accounts::kMinPassword || password->size() > accounts::kMaxPassword) {
      if (login) return reply_error(session, id, Errc::unauthorized, kWrongLogin, false);
      return reply_error(
          session, id, Errc::bad_request,
          fmt::format("a password must be {} to {} bytes", accounts::kMinPassword, accounts::kMaxPassword), false);
    }
    if (login) {
      const auto wait = std::max(failures_by_user.wait(user, now), failures_by_address.wait(address, now));
      if (wait.count() > 0) {
        return reply_error(session, id, Errc::unavailable,
                           fmt::format("too many failed logins; try again in {} s",
                                       std::chrono::ceil<std::chrono::seconds>(wait).count()),
                           false);
      }
    }
    if (hashes_queued >= config.max_queued_hashes) {
      return reply_error(session, id, Errc::unavailable, "the central server is busy; retry", false);
    }
    std::optional<User> known;
    std::string stored;
    try {
      // A read of the store: on PostgreSQL it fails while the database is
      // away (Errc::unavailable), which the client hears; never the process.
      if (login) {
        if (auto found = accounts.password_hash(user)) {
          known = found->first;
          stored = std::move(found->second);
        } else {
          stored = accounts::dummy_hash(password_cost());
        }
      } else if (accounts.password_hash(user)) {
        return reply_error(session, id, Errc::bad_request, fmt::format("user {} already exists", user), false);
      }
    } catch (const db::Unavailable& e) {
      return reply_store_unavailable(session, id, e);
    } catch (const Error& e) {
      return reply_error(session, id, e.code(), e.what(), false);
    } catch (const std::exception& e) {
      log::error("central: account lookup failed: {}", e.what());
      return reply_error(session, id, Errc::unavailable, "internal error", false);
    }
    ++hashes_queued;
    const auto cost = password_cost();
    std::weak_ptr<Session> weak = session;
    // The pool holds no strong reference: the last one must never be
    // dropped on a pool thread (its destructor joins the pool).
    std::weak_ptr<Impl> weak_self = shared_from_this();
    asio::post(hash_pool, [&io = io, weak_self, weak, id, login, user, known, stored, password, address, cost] {
      std::string result;  // login: "1" if it matched; create: the hash
      try {
        if (login) {
          result = accounts::verify_password(stored, *password) ? "1" : "";
        } else {
          result = accounts::hash_password(*password, cost);
        }
      } catch (const std::exception&) {
        result.clear();
      }
      sodium_memzero(password->data(), password->size());
      asio::post(io, [weak_self, weak, id, login, user, known, result, address] {
        auto self = weak_self.lock();
        if (!self) return;
        --self->hashes_queued;
        auto s = weak.lock();
        if (!s || self->stopping) return;
        self->finish_password_request(s, id, login, user, known, result, address);
      });
    });
  }

  void finish_password_request(const std::shared_ptr<Session>& session, std::uint64_t id, bool login,
                               const std::string& user, const std::optional<User>& known, const std::string& result,
                               const std::string& address) {
    pb::CentralResponse response;
    response.set_request_id(id);
    try {
      const auto now = std::chrono::system_clock::now();
      if (login) {
        if (!known || result != "1") {
          const auto steady = std::chrono::steady_clock::now();
          failures_by_user.failed(user, steady);
          failures_by_address.failed(address, steady);
          throw Error(Errc::unauthorized, kWrongLogin);
        }
        failures_by_user.succeeded(user);
        auto* out = response.mutable_logged_in();
        out->set_user(known->name);
        out->set_session(accounts.create_session(*known, now));
      } else {
        if (result.empty()) throw Error(Errc::unavailable, "could not hash the password; retry");
        accounts.create_user(user, result, now);
        response.mutable_ok();
      }
    } catch (const db::Unavailable& e) {
      return reply_store_unavailable(session, id, e);
    } catch (const Error& e) {
      return reply_error(session, id, e.code(), e.what(), false);
    } catch (const std::exception& e) {
      log::error("central: account request failed: {}", e.what());
      return reply_error(session, id, Errc::unavailable, "internal error", false);
    }
    answer(session, id, response.SerializeAsString(), std::nullopt);
  }

  User require_user(const pb::CentralRequest& request) {
    auto user = accounts.session_user(request.session());
    if (!user) throw Error(Errc::unauthorized, "not logged in (or the session ended): log in first");
    return *user;
  }

  void fill_file_list(pb::FileList* out, const std::vector<FileSummary>& files) {
    for (const auto& f : files) {
      auto* entry = out->add_files();
      entry->set_file_id(to_bytes(f.id));
      entry->set_name(f.name);
      entry->set_size(f.size);
      entry->set_holders(f.live_holders);
    }
  }

  // Returns true if the request was an account request (answered in `response`).
  bool handle_account(Session& session, const pb::CentralRequest& request, pb::CentralResponse& response,
                      std::chrono::system_clock::time_point now) {
    switch (request.body_case()) {
      case pb::CentralRequest::kLogout:
        if (!accounts.session_user(request.session())) throw Error(Errc::unauthorized, "not logged in");
        accounts.delete_session(request.session());
        response.mutable_ok();
        return true;
      case pb::CentralRequest::kWhoami:
        response.mutable_account()->set_user(require_user(request).name);
        return true;
      case pb::CentralRequest::kCreateGroup:
        accounts.create_group(require_user(request), request.create_group().group(), now);
        response.mutable_ok();
        return true;
      case pb::CentralRequest::kListGroups: {
        auto* out = response.mutable_group_list();
        for (const auto& g : accounts.list_groups(require_user(request))) {
          auto* entry = out->add_groups();
          entry->set_name(g.name);
          entry->set_owner(g.owner);
          entry->set_members(g.members);
          entry->set_member(g.member);
          entry->set_pending(g.pending);
        }
        return true;
      }
      case pb::CentralRequest::kJoinGroup:
        accounts.request_join(require_user(request), request.join_group().group(), now);
        response.mutable_ok();
        return true;
      case pb::CentralRequest::kListRequests: {
        auto* out = response.mutable_user_list();
        for (auto& name : accounts.requests(require_user(request), request.list_requests().group())) {
          out->add_users(std::move(name));
        }
        return true;
      }
      case pb::CentralRequest::kAcceptRequest:
      case pb::CentralRequest::kRejectRequest: {
        const bool accept = request.has_accept_request();
        const auto& decide = accept ? request.accept_request() : request.reject_request();
        accounts.decide(require_user(request), decide.group(), decide.user(), accept, now);
        response.mutable_ok();
        return true;
      }
      case pb::CentralRequest::kLeaveGroup:
        accounts.leave(require_user(request), request.leave_group().group());
        response.mutable_ok();
        return true;
      case pb::CentralRequest::kGetCapabilities: {
        // Issued to the peer id this connection proved and registered: a
        // capability is worth nothing on another peer.
        const PeerId& peer = require_peer(session);
        const User user = require_user(request);
        auto file = file_id_from_bytes(request.get_capabilities().file_id());
        if (!file) throw Error(Errc::bad_request, "file id must be 32 bytes");
        const auto groups = accounts.member_groups_of(user, *file);
        if (groups.empty()) throw Error(Errc::unauthorized, "not a member of a group this file is in");
        auto* out = response.mutable_capabilities();
        for (const auto& group : groups) {
          *out->add_capabilities() = accounts::sign_capability(
              accounts::Capability{user.name, peer, group, now + config.capability_lifetime}, identity.key.get());
        }
        return true;
      }
      default:
        return false;
    }
  }

  const PeerId& require_peer(const Session& session) {
    if (!session.peer) throw Error(Errc::unauthorized, "register first");
    return *session.peer;
  }

  void handle(const std::shared_ptr<Session>& session_ptr, const pb::CentralRequest& request,
              pb::CentralResponse& response) {
    Session& session = *session_ptr;
    const auto now = std::chrono::system_clock::now();
    if (handle_account(session, request, response, now)) return;
    switch (request.body_case()) {
      case pb::CentralRequest::kRegister: {
        const auto& reg = request.register_();
        // The id is the one the client certificate's key proved in the
        // handshake: nobody can register as another peer.
        const auto proven = session.connection->peer_id();
        if (!proven) {
          throw Error(Errc::unauthorized,
                      "register needs a TLS client certificate: the peer id is derived from its key");
        }
        if (reg.listen_port() == 0 || reg.listen_port() > 65535) throw Error(Errc::bad_request, "invalid listen port");
        const PeerId id = *proven;
        const std::string host = observed_host(session.connection->remote());
        registry.upsert_peer(id, host, static_cast<std::uint16_t>(reg.listen_port()), now,
                             registration_source(session.connection->remote()));
        // The newest connection that proves the key speaks for the peer.
        if (auto old = bound[id].lock(); old && old.get() != &session) {
          old->peer.reset();
          old->connection->close("replaced by a newer registration");
        }
        bound[id] = session_ptr;
        session.peer = id;
        replicas.registered(id, reg.cache_limit(), reg.cache_used());
        session.connection->set_limits(protocol::kCentralPeerRequestLimits);
        metrics->registrations.add();
        auto* out = response.mutable_registered();
        out->set_peer_id(to_bytes(id));
        out->set_heartbeat_interval_ms(static_cast<std::uint32_t>(config.heartbeat_interval.count()));
        out->set_observed_host(host);
        return;
      }
      case pb::CentralRequest::kAnnounce: {
        const PeerId& peer = require_peer(session);
        const Manifest manifest = manifest_from_wire(request.announce().manifest());
        std::optional<Bitfield> partial;
        if (!request.announce().bitfield().empty()) {
          partial = Bitfield::from_wire(request.announce().bitfield(), manifest.chunk_count());
          if (!partial) throw Error(Errc::bad_request, "bitfield does not match the manifest");
        }
        const auto& groups = request.announce().groups();
        if (groups.size() > kMaxAnnounceGroups) throw Error(Errc::bad_request, "a file may be in at most 8 groups");
        std::vector<std::int64_t> group_ids;
        if (!groups.empty()) {
          const User user = require_user(request);
          for (const auto& group : groups) group_ids.push_back(accounts.require_member(user, group));
        }
        const auto& announce = request.announce();
        const bool complete = !partial || partial->all();
        if (announce.has_replicas() && !complete) {
          throw Error(Errc::bad_request, "only a complete holder may set a replica target");
        }
        registry.touch_peer(peer, now);
        const FileId id = manifest.file_id();
        // Checked before the announce is stored: a refused target refuses the announce.
        std::optional<std::uint32_t> target;
        if (announce.has_replicas()) target = replicas.request(peer, id, manifest.chunk_count(), announce.replicas());
        try {
          registry.announce(peer, manifest, std::move(partial));
        } catch (...) {
          // Refused only for a file new to this peer, which was no owner of
          // it then: its request goes again.
          if (announce.has_replicas()) replicas.withdraw(peer, id);
          throw;
        }
        if (target) registry.set_replicas(id, *target);
        if (complete) replicas.announced(peer, id, announce.cached());
        metrics->announces.add();
        for (const auto group : group_ids) accounts.add_file_to_group(id, group);
        if (group_ids.empty()) accounts.mark_public(id);
        response.mutable_ok();
        return;
      }
      case pb::CentralRequest::kWithdraw: {
        const PeerId& peer = require_peer(session);
        auto id = file_id_from_bytes(request.withdraw().file_id());
        if (!id) throw Error(Errc::bad_request, "file id must be 32 bytes");
        registry.withdraw(peer, *id);
        if (auto target = replicas.withdraw(peer, *id)) registry.set_replicas(*id, *target);
        metrics->withdrawals.add();
        response.mutable_ok();
        return;
      }
      case pb::CentralRequest::kHeartbeat: {
        const PeerId& peer = require_peer(session);
        if (!registry.touch_peer(peer, now)) throw Error(Errc::unauthorized, "register first");
        const auto& beat = request.heartbeat();
        if (beat.gave_up_size() > kMaxGaveUp) throw Error(Errc::bad_request, "at most 64 files given up per heartbeat");
        std::vector<FileId> gave_up;
        for (const auto& raw : beat.gave_up()) {
          auto file = file_id_from_bytes(raw);
          if (!file) throw Error(Errc::bad_request, "file id must be 32 bytes");
          gave_up.push_back(*file);
        }
        auto orders =
            replicas.heartbeat(peer, beat.cache_used(), gave_up, std::chrono::steady_clock::now(), replica_view(now));
        if (!orders) {
          response.mutable_ok();
          return;
        }
        auto* out = response.mutable_cache_orders();
        for (const auto& file : orders->fetch) out->add_fetch(to_bytes(file));
        for (const auto& file : orders->drop) out->add_drop(to_bytes(file));
        for (const auto& file : orders->keep) out->add_keep(to_bytes(file));
        return;
      }
      case pb::CentralRequest::kListFiles: {
        std::optional<FileId> after;
        if (!request.list_files().after_file_id().empty()) {
          after = file_id_from_bytes(request.list_files().after_file_id());
          if (!after) throw Error(Errc::bad_request, "file id must be 32 bytes");
        }
        std::uint32_t limit = request.list_files().limit();
        if (limit == 0 || limit > kMaxPageSize) limit = kMaxPageSize;
        auto* out = response.mutable_file_list();
        if (!request.list_files().group().empty()) {
          // A group's files, to its members only.
          const auto group = accounts.require_member(require_user(request), request.list_files().group());
          auto ids = accounts.group_files(group, after, limit + 1);
          out->set_more(ids.size() > limit);
          if (ids.size() > limit) ids.resize(limit);
          std::vector<FileSummary> files;
          for (const auto& id : ids) {
            if (auto summary = registry.summary(id, now)) files.push_back(std::move(*summary));
          }
          if (!ids.empty()) out->set_resume_after(to_bytes(ids.back()));
          fill_file_list(out, files);
          return;
        }
        // Public: a group's file is skipped unless someone registered the
        // same bytes publicly too.
        auto files = registry.list_files(after, limit + 1, now);
        out->set_more(files.size() > limit);
        if (files.size() > limit) files.resize(limit);
        const std::size_t scanned = files.size();
        const std::string last = files.empty() ? std::string() : to_bytes(files.back().id);
        std::erase_if(files, [this](const FileSummary& f) { return accounts.hidden(f.id); });
        if (files.size() != scanned) out->set_resume_after(last);
        fill_file_list(out, files);
        return;
      }
      case pb::CentralRequest::kListPeers: {
        std::optional<FileId> file;
        if (!request.list_peers().file_id().empty()) {
          file = file_id_from_bytes(request.list_peers().file_id());
          if (!file) throw Error(Errc::bad_request, "file id must be 32 bytes");
        }
        auto* out = lend_peer_list(response);
        if (file && registry.shared() && !registry.summary(*file, now)) catch_up_on_miss();
        for (const auto& peer : registry.live_peers(file, now)) fill_peer(peer, out->add_peers());
        return;
      }
      case pb::CentralRequest::kGetFile: {
        auto id = file_id_from_bytes(request.get_file().file_id());
        if (!id) throw Error(Errc::bad_request, "file id must be 32 bytes");
        auto details = registry.file(*id, now);
        // Announced through another central server a moment ago: read the
        // change log now rather than answer "unknown" until the next poll.
        if (!details && registry.shared() && catch_up_on_miss()) details = registry.file(*id, now);
        // A group's file is described to its members only; to anyone else
        // it is as unknown as a file id nobody registered.
        const bool visible = details && (!accounts.hidden(*id) || [&] {
                               auto user = accounts.session_user(request.session());
                               return user && !accounts.member_groups_of(*user, *id).empty();
                             }());
        if (!visible) throw Error(Errc::not_found, fmt::format("unknown file id {}", to_hex(*id)));
        auto* out = lend_file(response);
        manifest_to_wire(details->manifest, out->mutable_manifest());
        if (session.peer && !request.session().empty()) {
          if (auto user = accounts.session_user(request.session())) {
            for (const auto& group : accounts.member_groups_of(*user, *id)) {
              *out->add_capabilities() = accounts::sign_capability(
                  accounts::Capability{user->name, *session.peer, group, now + config.capability_lifetime},
                  identity.key.get());
            }
          }
        }
        for (const auto& name : details->names) out->add_names(name);
        out->set_replicas(details->replicas);
        if (auto facts = registry.replica_facts(*id, now)) out->set_live_copies(replicas.live_copies(*id, *facts));
        // Bounded answer: a download needs some sources, not all (each
        // partial holder costs up to 8 KiB of bitfield).
        std::size_t listed = 0;
        for (const auto& holder : details->live_holders) {
          if (++listed > kMaxHoldersPerAnswer) break;
          auto* entry = out->add_holders();
          fill_peer(holder.peer, entry);
          if (holder.partial) entry->mutable_bitfield()->assign(holder.partial->to_wire());
        }
        return;
      }
      default:
        break;
    }
    throw Error(Errc::protocol, "unknown request");
  }

  // Applies the other central servers' changes (shared stores only). Runs
  // with no batch open: the pending writes are committed (and their answers
  // sent) first, as the flush timer does.
  void catch_up() {
    if (!registry.shared()) return;
    if (registry.has_uncommitted()) commit();
    last_catch_up = std::chrono::steady_clock::now();
    metrics->change_log_reads.add();
    try {
      metrics->changes_applied.add(registry.sync());
      if (sync_failing) log::info("central: reading the other central servers' changes works again");
      sync_failing = false;
    } catch (const std::exception& e) {
      metrics->change_log_read_failures.add();
      if (!sync_failing) log::warn("central: reading the other central servers' changes failed: {}", e.what());
      sync_failing = true;
    }
  }

  // A read missed in memory: catch up now unless one did moments ago.
  // True if it did.
  bool catch_up_on_miss() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_catch_up < kMissCatchUpInterval) return false;
    metrics->change_log_miss_reads.add();
    catch_up();
    return true;
  }

  void schedule_sync() {
    if (!registry.shared()) return;
    sync_timer.expires_after(kSyncInterval);
    sync_timer.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (ec || self->stopping) return;
      self->catch_up();
      self->schedule_sync();
    });
  }

  void schedule_flush() {
    flush_timer.expires_after(config.heartbeat_interval);
    flush_timer.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (ec || self->stopping) return;
      self->commit(true);
      self->forget_stale();
      self->schedule_flush();
    });
  }

  // One bounded step; a backlog goes on in later steps, each queued behind
  // the requests that arrived meanwhile, so nobody waits for all of it.
  void forget_stale() {
    // A failed write rolls back the whole open batch: commit (and answer)
    // the requests' writes first, so a failure here can only undo its own.
    if (registry.has_uncommitted()) commit();
    Forgotten forgotten;
    try {
      forgotten = registry.forget_stale(std::chrono::system_clock::now(), kForgetBatchRows);
    } catch (const std::exception& e) {
      // The registry rolled back to the last commit; the next tick retries.
      log::error("central: forgetting stale peers and files failed: {}", e.what());
      return;
    }
    if (forgotten.peers + forgotten.files > 0) {
      log::info("central: forgot {} peers not seen for {} s and {} files nobody holds", forgotten.peers,
                std::chrono::duration_cast<std::chrono::seconds>(config.limits.forget_after).count(), forgotten.files);
    }
    if (registry.has_uncommitted()) post_commit();
    if (forgotten.more) {
      asio::post(io, [self = shared_from_this()] {
        if (!self->stopping) self->forget_stale();
      });
    }
  }
};

CentralServer::CentralServer(asio::io_context& io, ServerConfig config)
    : impl_(std::make_shared<Impl>(io, std::move(config))) {}

CentralServer::~CentralServer() = default;

std::string CentralServer::fingerprint() const {
  return impl_->identity.fingerprint();
}

cli::Address CentralServer::start() {
  auto bound = listen_on(impl_->acceptor, impl_->config.listen);
  impl_->accept();
  if (impl_->config.http) impl_->start_http();
  impl_->schedule_flush();
  impl_->schedule_sync();
  return bound;
}

void CentralServer::stop() {
  asio::post(impl_->io, [impl = impl_] {
    if (impl->stopping) return;
    impl->stopping = true;
    std::error_code ignored;
    impl->acceptor.close(ignored);
    if (impl->http_server) impl->http_server->stop();
    impl->flush_timer.cancel();
    impl->sync_timer.cancel();
    // Whatever was written is committed, with the heartbeats, before the
    // connections close.
    impl->commit(true);
    impl->hash_pool.stop();
    auto sessions = impl->sessions;
    for (const auto& s : sessions) s->connection->close("server shutting down");
  });
}

std::optional<cli::Address> CentralServer::http_address() const {
  return impl_->http_bound;
}

}  // namespace p2pshare::central
