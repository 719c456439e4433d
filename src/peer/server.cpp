#include "p2pshare/peer_server.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <cstring>
#include <map>
#include <set>

#include <fmt/format.h>

#include "control.pb.h"
#include "p2pshare/accounts.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/http.hpp"
#include "p2pshare/listen.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/replicas.hpp"
#include "peer/central_link.hpp"
#include "peer/folder.hpp"
#include "peer/http_api.hpp"
#include "peer/state.hpp"
#include "peer/stream.hpp"
#include "peer/swarm.hpp"

namespace p2pshare::peer {
namespace {

// register-file --replicas: the most the central server takes (replicas.hpp).
constexpr std::uint32_t kMaxReplicas = 16;

// The logged-in user's session (accounts): "USER\nTOKEN-HEX\n", 0600.
constexpr const char* kSessionFile = "session";
// How often every shared file is stat'ed for a change made under the peer
// (deleted, resized, written, replaced). Serving a chunk checks it too.
constexpr auto kFileCheckInterval = std::chrono::seconds(2);

// What a check of one shared file decided.
struct FileVerdict {
  enum Kind { keep, reverified, withdraw } kind = keep;
  std::optional<store::FileIdentity> identity;  // keep/reverified: the file as it is now
  std::string reason;                           // withdraw: why
};

// Runs on a disk thread: is the file at `path` still the one with id `id`?
// Deleted or resized: withdraw. Same size but written, replaced or never
// stamped: hashed again chunk by chunk (one thread), kept only if every chunk
// still matches.
FileVerdict check_shared_file(const FileId& id, const std::filesystem::path& path, const Manifest& manifest,
                              const std::optional<store::FileIdentity>& expected) {
  const auto now = store::identity_of(path);
  if (!now) return {FileVerdict::withdraw, std::nullopt, "deleted or unreadable"};
  if (now->size != manifest.size) {
    return {FileVerdict::withdraw, std::nullopt, fmt::format("resized to {} bytes", now->size)};
  }
  if (expected && *now == *expected) return {FileVerdict::keep, now, ""};
  // Written, replaced, or never stamped (a peer.db from before identities, a
  // download that finished with nobody watching): hashed once to know.
  try {
    const Manifest again = build_manifest(path, 1, manifest.chunk_size);
    if (again.file_id() != id) return {FileVerdict::withdraw, std::nullopt, "its bytes changed"};
    // Hashes that match a file that moved meanwhile prove nothing.
    if (store::identity_of(path) != now) return {FileVerdict::withdraw, std::nullopt, "it is being written"};
    return {FileVerdict::reverified, now, ""};
  } catch (const std::exception& e) {
    return {FileVerdict::withdraw, std::nullopt, e.what()};
  }
}

std::string encode(const pb::ControlResponse& response) {
  return response.SerializeAsString();
}

pb::ControlResponse error_response(Errc code, const std::string& text) {
  pb::ControlResponse response;
  *response.mutable_error() = protocol::make_error(static_cast<int>(code), text);
  return response;
}

// The control plane's sink: answers go to the control connection (held
// weakly: a client that left gets nothing more).
class ConnectionSink : public ControlSink {
 public:
  explicit ConnectionSink(const std::shared_ptr<wire::Connection>& connection) : connection_(connection) {}
  void send(std::string bytes) override {
    if (auto c = connection_.lock()) c->send(std::move(bytes));
  }
  bool closed() const override {
    auto c = connection_.lock();
    return !c || c->closed();
  }
  std::size_t queued_bytes() const override {
    auto c = connection_.lock();
    return c ? c->queued_bytes() : 0;
  }
  std::shared_ptr<wire::Connection> connection() const override { return connection_.lock(); }

 private:
  std::weak_ptr<wire::Connection> connection_;
};

Errc errc_of(const pb::Error& error) {
  const int code = error.code();
  if (code >= static_cast<int>(Errc::bad_request) && code <= static_cast<int>(Errc::limit)) {
    return static_cast<Errc>(code);
  }
  return Errc::unavailable;
}

struct SavedSession {
  std::string user;
  std::string token;  // 32 raw bytes
};

std::optional<SavedSession> load_session(const std::filesystem::path& path) {
  std::ifstream in(path);
  SavedSession saved;
  std::string hex;
  if (!in || !std::getline(in, saved.user) || !std::getline(in, hex) || hex.size() != 64) return std::nullopt;
  if (accounts::name_error("user", saved.user)) return std::nullopt;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const auto digit = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      return -1;
    };
    const int hi = digit(hex[i]);
    const int lo = digit(hex[i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    saved.token.push_back(static_cast<char>(hi * 16 + lo));
  }
  return saved;
}

// Written under a temporary name, synced and renamed, 0600 from creation.
void save_session(const std::filesystem::path& path, const SavedSession& saved) {
  const auto text =
      fmt::format("{}\n{}\n", saved.user,
                  to_hex(std::span(reinterpret_cast<const std::uint8_t*>(saved.token.data()), saved.token.size())));
  const auto temp = path.string() + ".tmp";
  store::FileHandle out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out) throw Error(Errc::io, fmt::format("cannot create {}: {}", temp, errno_text(errno)));
  if (::write(out.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) || ::fsync(out.get()) != 0 ||
      ::rename(temp.c_str(), path.c_str()) != 0) {
    throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
  }
}

}  // namespace

std::filesystem::path cookie_path(const std::filesystem::path& data_dir) {
  return data_dir / "control.cookie";
}

std::optional<std::string> cookie_hex_of(std::string_view bytes) {
  if (bytes.size() == 32) return to_hex(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  if (bytes.ends_with('\n')) bytes.remove_suffix(1);
  if (bytes.ends_with('\r')) bytes.remove_suffix(1);
  if (bytes.size() != 64) return std::nullopt;
  std::string hex;
  for (char c : bytes) {
    if (!std::isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
    hex.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return hex;
}

struct PeerServer::Impl : std::enable_shared_from_this<PeerServer::Impl> {
  Impl(asio::io_context& io_context, PeerConfig cfg)
      : io(io_context),
        config(std::move(cfg)),
        acceptor(io),
        disk(config.disk_threads != 0 ? config.disk_threads : std::max(2u, std::thread::hardware_concurrency())) {}

  asio::io_context& io;
  PeerConfig config;
  asio::ip::tcp::acceptor acceptor;
  asio::thread_pool disk;
  std::unique_ptr<PeerState> state;
  std::string cookie;
  std::unique_ptr<Services> services;
  std::map<FileId, std::shared_ptr<Swarm>> swarms;
  std::set<std::shared_ptr<wire::Connection>> connections;  // every accepted one, until it closes
  cli::Address bound;
  bool stopping = false;
  std::unique_ptr<asio::steady_timer> upload_timer;
  // Withdrawals the central server has not confirmed: sent again at the next
  // registration, so a file stopped while it was unreachable is not listed forever.
  std::set<FileId> pending_withdrawals;
  // Shared files as they were when hashed (registered or downloaded), and
  // the checks under way with whoever waits on each.
  std::map<FileId, store::FileIdentity> identities;
  std::map<FileId, std::vector<std::function<void()>>> file_checks;
  std::unique_ptr<asio::steady_timer> file_timer;
  bool sweeping = false;
  // --share-dir: its files are checked by the watcher (inotify), not the sweep.
  std::shared_ptr<FolderWatcher> folders;

  bool in_folder(const std::filesystem::path& path) const { return folders && folders->folder_of(path); }
  std::unique_ptr<http::Server> http_server;
  std::optional<cli::Address> http_bound;

  void start_http() {
    auto host = std::make_shared<PeerHttpHost>();
    host->services = services.get();
    host->cookie = cookie;
    std::weak_ptr<Impl> weak = weak_from_this();
    host->control = [weak](const std::shared_ptr<ControlSink>& sink, const pb::ControlRequest& request) {
      if (auto self = weak.lock(); self && !self->stopping) self->handle_control(sink, request);
    };
    host->lookup = [weak](const FileId& id) -> std::shared_ptr<Swarm> {
      auto self = weak.lock();
      return self ? self->lookup(id) : nullptr;
    };
    host->swarms = [weak] {
      std::vector<std::shared_ptr<Swarm>> all;
      if (auto self = weak.lock()) {
        for (const auto& [id, swarm] : self->swarms) all.push_back(swarm);
      }
      return all;
    };
    host->listen_address = [weak] {
      auto self = weak.lock();
      return self ? self->bound.to_string() : std::string{};
    };
    host->http_connections = [weak] {
      auto self = weak.lock();
      return self && self->http_server ? self->http_server->connections() : 0;
    };
    host->cache_used = [weak] {
      auto self = weak.lock();
      return self ? self->cache_used() : std::uint64_t{0};
    };
    host->cache_limit = config.cache_limit;
    http_server = std::make_unique<http::Server>(io, http::Limits{}, make_peer_http_handler(host));
    http_server->on_answered = [metrics = services->metrics](double seconds) {
      metrics->http_seconds.observe(seconds);
    };
    http_bound = http_server->start(*config.http);
  }
  std::string user;  // logged in (services->session holds the token); empty = nobody

  static bool seeding(const Swarm& swarm) { return swarm.complete() && !swarm.downloading(); }

  void remember_identity(const FileId& id, const store::FileIdentity& identity) {
    identities[id] = identity;
    try {
      state->put_shared_identity(id, identity);
    } catch (const Error& e) {
      // Kept in memory: only a restart loses it (the file is hashed again then).
      log::error("cannot save the identity of {}: {}", to_hex(id), e.what());
    }
  }

  // Checks one shared file off the network thread; `then` runs on the
  // network thread once it is kept, re-verified or withdrawn.
  void check_file(const FileId& id, std::function<void()> then) {
    auto swarm = lookup(id);
    if (!swarm || !seeding(*swarm) || in_folder(swarm->path())) {
      // A folder's file: the watcher looks at it (a rename must keep its id, not lose it here).
      if (swarm && folders) folders->touch(swarm->path());
      if (then) then();
      return;
    }
    auto [it, fresh] = file_checks.try_emplace(id);
    if (then) it->second.push_back(std::move(then));
    if (!fresh) return;
    std::optional<store::FileIdentity> expected;
    if (auto known = identities.find(id); known != identities.end()) expected = known->second;
    asio::post(disk, [self = shared_from_this(), swarm, id, expected, path = swarm->path()] {
      auto verdict = check_shared_file(id, path, swarm->manifest(), expected);
      asio::post(self->io, [self, swarm, id, verdict = std::move(verdict)] { self->apply(swarm, id, verdict); });
    });
  }

  void apply(const std::shared_ptr<Swarm>& checked, const FileId& id, const FileVerdict& verdict) {
    auto waiting = std::move(file_checks[id]);
    file_checks.erase(id);
    // Stopped or replaced while we hashed: the check is moot.
    if (lookup(id) == checked && !stopping) {
      if (verdict.kind == FileVerdict::withdraw) {
        log::warn("{} changed on disk ({}): no longer shared as {}", checked->path().string(), verdict.reason,
                  to_hex(id));
        checked->shutdown(false);
        swarms.erase(id);
        identities.erase(id);
        try {
          state->remove_shared(id);
        } catch (const Error& e) {
          log::error("cannot forget {}: {}", to_hex(id), e.what());
        }
        withdraw(id);
      } else {
        remember_identity(id, *verdict.identity);
        if (verdict.kind == FileVerdict::reverified) {
          // Same bytes under a new stamp: a fresh seed opens a fresh reader
          // held to the new identity (the old one refuses every read).
          log::info("{} was written but still matches {}: still shared", checked->path().string(), to_hex(id));
          checked->save_uploaded();
          checked->shutdown(false);
          auto fresh = Swarm::seed(*services, checked->manifest(), checked->path(), checked->uploaded());
          fresh->set_groups(checked->groups());  // a group's file stays the group's
          swarms[id] = fresh;
        }
      }
    }
    for (auto& then : waiting) then();
  }

  void check_files_periodically() {
    file_timer->expires_after(kFileCheckInterval);
    file_timer->async_wait([weak = weak_from_this()](const std::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->stopping) return;
      self->sweep_files();
      self->check_files_periodically();
    });
  }

  // One stat per shared file on a disk thread; only files whose identity
  // moved are checked further (hashing is for those alone).
  void sweep_files() {
    if (sweeping) return;
    std::vector<std::tuple<FileId, std::filesystem::path, std::optional<store::FileIdentity>>> files;
    for (const auto& [id, swarm] : swarms) {
      if (!seeding(*swarm) || file_checks.count(id) || in_folder(swarm->path())) continue;
      auto known = identities.find(id);
      files.emplace_back(id, swarm->path(), known == identities.end() ? std::nullopt : std::optional(known->second));
    }
    if (files.empty()) return;
    sweeping = true;
    asio::post(disk, [self = shared_from_this(), files = std::move(files)] {
      std::vector<FileId> moved;
      for (const auto& [id, path, expected] : files) {
        if (!expected || store::identity_of(path) != expected) moved.push_back(id);
      }
      asio::post(self->io, [self, moved = std::move(moved)] {
        self->sweeping = false;
        for (const auto& id : moved) self->check_file(id, nullptr);
      });
    });
  }

  void save_uploads_periodically() {
    upload_timer->expires_after(std::chrono::seconds(5));
    upload_timer->async_wait([weak = weak_from_this()](const std::error_code& ec) {
      auto self = weak.lock();
      if (ec || !self || self->stopping) return;
      for (const auto& [id, swarm] : self->swarms) swarm->save_uploaded();
      self->touch_served_cache();
      self->save_uploads_periodically();
    });
  }

  void withdraw(const FileId& id) {
    pending_withdrawals.insert(id);
    pb::CentralRequest request;
    request.mutable_withdraw()->set_file_id(to_bytes(id));
    services->central->request(
        std::move(request),
        [weak = weak_from_this(), id](auto response, const std::string&) {
          auto self = weak.lock();
          if (!self || !response || !response->has_ok()) return;
          self->pending_withdrawals.erase(id);
          self->announce_refused();
        },
        std::chrono::seconds(0));
  }

  // A withdrawal made room under the central server's per-peer limits:
  // files it refused for them are offered again, a few per withdrawal (one
  // file's room takes one; the rest are refused again, quietly).
  void announce_refused() {
    constexpr std::size_t kPerWithdrawal = 8;
    std::size_t offered = 0;
    for (const auto& [file, swarm] : swarms) {
      if (!swarm->refused_for_limit()) continue;
      swarm->announce();
      if (++offered == kPerWithdrawal) break;
    }
  }

  // --- replicas and the volunteer cache (docs/architecture.md) -------------
  // Owner: the replica target asked per registered file. Volunteer: its
  // cache copies' LRU times; the fetches the central server asked for; the
  // ones given up on, told at the next heartbeat; the copies it must keep.
  std::map<FileId, ReplicaRecord> replica_records;
  std::set<FileId> cache_fetching;
  std::vector<FileId> cache_gave_up;
  std::set<FileId> cache_keep;
  std::map<FileId, std::uint64_t> cache_uploaded_seen;

  bool volunteer() const { return config.cache_limit > 0; }

  static std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  // Bytes the complete cache copies take.
  std::uint64_t cache_used() const {
    std::uint64_t used = 0;
    for (const auto& [id, swarm] : swarms) {
      if (swarm->cached() && seeding(*swarm)) used += swarm->manifest().size;
    }
    return used;
  }
  // And the fetches under way, whose space is promised.
  std::uint64_t cache_reserved() const {
    std::uint64_t reserved = cache_used();
    for (const auto& id : cache_fetching) {
      auto it = swarms.find(id);
      if (it != swarms.end() && !seeding(*it->second)) reserved += it->second->manifest().size;
    }
    return reserved;
  }

  void save_replica_record(const FileId& id, const ReplicaRecord& record) {
    replica_records[id] = record;
    try {
      state->put_replica_record(id, record);
    } catch (const Error& e) {
      log::error("cannot save the replica state of {}: {}", to_hex(id), e.what());
    }
  }

  void forget_replica_record(const FileId& id) {
    if (replica_records.erase(id) == 0) return;
    cache_uploaded_seen.erase(id);
    try {
      state->remove_replica_record(id);
    } catch (const Error& e) {
      log::error("cannot forget the replica state of {}: {}", to_hex(id), e.what());
    }
  }

  // Deletes a cache copy: no longer served, announced or on disk.
  void drop_cached(const FileId& id, const char* why) {
    auto swarm = lookup(id);
    if (!swarm || !swarm->cached()) return;
    log::info("cache: dropping {} ({})", to_hex(id), why);
    const auto path = swarm->path();
    const bool partial = !seeding(*swarm);
    swarm->shutdown(!partial);
    if (partial) swarm->discard_partial();
    swarms.erase(id);
    identities.erase(id);
    cache_fetching.erase(id);
    cache_keep.erase(id);
    try {
      state->remove_shared(id);
      state->remove_download(id);
    } catch (const Error& e) {
      log::error("cannot forget {}: {}", to_hex(id), e.what());
    }
    forget_replica_record(id);
    std::error_code ignored;
    // The path is ours: the cache dir and the file id's hex digits.
    if (!partial && path.parent_path() == config.cache_dir) std::filesystem::remove(path, ignored);
    withdraw(id);
  }

  // Evicts complete cache copies, least recently used first, until `wanted`
  // more bytes fit under the limit. The copies the central server said to
  // keep go only when `even_kept` (the limit itself is over-run). False if
  // it could not make the room.
  bool make_room(std::uint64_t wanted, bool even_kept) {
    std::vector<cache::CacheCopy> copies;
    for (const auto& [id, swarm] : swarms) {
      if (!swarm->cached() || !seeding(*swarm)) continue;
      auto record = replica_records.find(id);
      const std::int64_t used = record == replica_records.end() ? 0 : record->second.last_used_ms;
      copies.push_back(cache::CacheCopy{id, used, cache_keep.contains(id)});
    }
    auto fits = [&] { return cache_reserved() + wanted <= config.cache_limit; };
    for (const auto& id : cache::eviction_order(std::move(copies), even_kept)) {
      if (fits()) break;
      drop_cached(id, "least recently used, the cache is full");
    }
    return fits();
  }

  void on_cache_orders(const pb::CacheOrders& orders) {
    if (!volunteer() || stopping) return;
    for (const auto& raw : orders.drop()) {
      if (auto id = file_id_from_bytes(raw)) drop_cached(*id, "its owner withdrew it");
    }
    cache_keep.clear();
    for (const auto& raw : orders.keep()) {
      if (auto id = file_id_from_bytes(raw)) cache_keep.insert(*id);
    }
    for (const auto& raw : orders.fetch()) {
      if (auto id = file_id_from_bytes(raw)) cache_fetch(*id);
    }
  }

  void cache_give_up(const FileId& id, const std::string& why) {
    log::warn("cache: not fetching {}: {}", to_hex(id), why);
    cache_fetching.erase(id);
    if (cache_gave_up.size() < 64) cache_gave_up.push_back(id);
  }

  // The central server asks for a copy: the normal download (every chunk
  // verified against the manifest the file id commits to) into the cache dir.
  void cache_fetch(const FileId& id) {
    if (lookup(id) || cache_fetching.contains(id)) return;  // held or under way already
    cache_fetching.insert(id);
    pb::CentralRequest get;
    get.mutable_get_file()->set_file_id(to_bytes(id));
    services->central->request(std::move(get), [weak = weak_from_this(), id](auto response, const std::string& error) {
      auto self = weak.lock();
      if (!self || self->stopping) return;
      if (!response || !response->has_file()) {
        return self->cache_give_up(id, response && response->has_error() ? response->error().message() : error);
      }
      Manifest manifest;
      try {
        manifest = manifest_from_wire(response->file().manifest());
      } catch (const Error& e) {
        return self->cache_give_up(id, std::string("bad metadata: ") + e.what());
      }
      if (manifest.file_id() != id) return self->cache_give_up(id, "the metadata does not match the file id");
      self->cache_fetching.erase(id);  // not counted in the room it needs
      if (self->lookup(id)) return;    // held or fetched by a request-file meanwhile
      if (!self->make_room(manifest.size, false)) {
        return self->cache_give_up(id, fmt::format("{} do not fit in the cache", cli::format_bytes(manifest.size)));
      }
      self->cache_fetching.insert(id);
      DownloadRecord record;
      manifest.name = store::sanitize_name(manifest.name, to_hex(id));
      record.manifest = std::move(manifest);
      record.directory = self->config.cache_dir;
      record.destination = self->config.cache_dir / to_hex(id);
      record.replace = true;
      record.have = Bitfield(record.manifest.chunk_count());
      auto swarm = Swarm::download(*self->services, std::move(record));
      swarm->set_cached(true);
      self->save_replica_record(id, ReplicaRecord{0, true, now_ms()});
      Observer observer;
      observer.progress = [](const pb::Progress&) {};
      observer.finished = [weak = self->weak_from_this(), id](const DownloadOutcome& outcome) {
        auto me = weak.lock();
        if (!me || me->stopping) return;
        if (const auto* failure = std::get_if<Failure>(&outcome)) {
          // Not from inside the swarm that is telling us: it may be its last owner.
          asio::post(me->io, [weak, id, message = failure->message] {
            auto again = weak.lock();
            if (!again || again->stopping) return;
            auto failed = again->lookup(id);
            if (failed && failed->cached() && !seeding(*failed)) {
              failed->shutdown(false);
              failed->discard_partial();
              again->swarms.erase(id);
              try {
                again->state->remove_download(id);
              } catch (const Error& e) {
                log::error("cannot forget the download of {}: {}", to_hex(id), e.what());
              }
              again->forget_replica_record(id);
            }
            again->cache_give_up(id, message);
          });
          return;
        }
        const auto& done = std::get<pb::Downloaded>(outcome);
        me->cache_fetching.erase(id);
        if (auto identity = store::identity_of(std::filesystem::path(done.path())))
          me->remember_identity(id, *identity);
        me->save_replica_record(id, ReplicaRecord{0, true, now_ms()});
        log::info("cache: holding {} ({})", to_hex(id), cli::format_bytes(done.size()));
      };
      swarm->add_observer(std::move(observer));
      self->swarms[id] = swarm;
      log::info("cache: fetching {} for the central server", to_hex(id));
      // Waits for holders: a file below its target may have none live for a while.
      swarm->start_download(true);
    });
  }

  // Served cache copies move to the back of the LRU order (every 5 s, with
  // the upload counters).
  void touch_served_cache() {
    for (const auto& [id, swarm] : swarms) {
      if (!swarm->cached() || !seeding(*swarm)) continue;
      auto& seen = cache_uploaded_seen[id];
      if (swarm->uploaded() == seen) continue;
      seen = swarm->uploaded();
      auto record = replica_records[id];
      record.cached = true;
      record.last_used_ms = now_ms();
      save_replica_record(id, record);
    }
  }

  void start_replicas() {
    services->central->set_replica_hooks(
        CentralLink::ReplicaHooks{[weak = weak_from_this()](pb::Register& reg) {
                                    auto self = weak.lock();
                                    if (!self || !self->volunteer()) return;
                                    reg.set_cache_limit(self->config.cache_limit);
                                    reg.set_cache_used(self->cache_used());
                                  },
                                  [weak = weak_from_this()](pb::Heartbeat& beat) {
                                    auto self = weak.lock();
                                    if (!self || !self->volunteer()) return;
                                    beat.set_cache_used(self->cache_used());
                                    for (const auto& id : self->cache_gave_up) beat.add_gave_up(to_bytes(id));
                                    self->cache_gave_up.clear();
                                  },
                                  [weak = weak_from_this()](const pb::CacheOrders& orders) {
                                    if (auto self = weak.lock()) self->on_cache_orders(orders);
                                  }});
    if (!volunteer()) return;
    // A limit lowered since the last run: the oldest copies go now.
    if (cache_used() > config.cache_limit) make_room(0, true);
  }

  // Our key pair (identity.key, identity.crt): the peer id is its hash.
  std::optional<tls::Identity> key_pair;
  std::shared_ptr<asio::ssl::context> server_tls;  // accepted connections, both planes
  std::shared_ptr<asio::ssl::context> client_tls;  // links we open, the central link

  void load() {
    std::filesystem::create_directories(config.data_dir);
    ::chmod(config.data_dir.c_str(), 0700);
    // A first-wave data dir's peer.key becomes the key's seed (the peer id
    // changes; the shared files stay and are announced under the new one).
    const bool legacy = !std::filesystem::exists(config.data_dir / tls::kKeyFile) &&
                        std::filesystem::exists(config.data_dir / tls::kLegacySecretFile);
    key_pair = tls::load_or_create_identity(config.data_dir, true);
    if (legacy) {
      log::info("moved the first-wave secret peer.key to a key pair: the peer id is now {}",
                to_hex(key_pair->peer_id()));
    }
    server_tls = tls::make_context(tls::Side::server, &*key_pair);
    client_tls = tls::make_context(tls::Side::client, &*key_pair);
    cookie = load_or_create_cookie(cookie_path(config.data_dir));
    state = std::make_unique<PeerState>(config.data_dir);
  }

  // After bind: the central server must be told the port we really listen on.
  void make_services(std::uint16_t port) {
    CentralLink::Trust trust{client_tls, key_pair->peer_id(), config.central_fingerprint, config.data_dir};
    auto central =
        std::make_shared<CentralLink>(io, config.centrals, std::move(trust), port, [weak = weak_from_this()] {
          if (auto self = weak.lock()) self->announce_all();
        });
    services = std::unique_ptr<Services>(
        new Services{io, disk, *state, central, std::make_shared<TokenBucket>(io, config.upload_limit),
                     std::make_shared<TokenBucket>(io, config.download_limit), std::make_shared<BufferPool>(),
                     central->peer_id(), config.sched});
    services->holder_refresh = config.holder_refresh;
    services->client_tls = client_tls;
    services->shared_identity = [weak = weak_from_this()](const FileId& id) -> std::optional<store::FileIdentity> {
      auto self = weak.lock();
      if (!self) return std::nullopt;
      auto it = self->identities.find(id);
      return it == self->identities.end() ? std::nullopt : std::optional(it->second);
    };
    services->on_unreadable = [weak = weak_from_this()](const FileId& id) {
      if (auto self = weak.lock()) self->check_file(id, nullptr);
    };
    services->trusted_central = [central]() { return central->trusted_key(); };
    if (auto saved = load_session(config.data_dir / kSessionFile)) {
      user = saved->user;
      services->session = saved->token;
    }
  }

  void announce_all() {
    const auto withdrawals = pending_withdrawals;
    for (const auto& id : withdrawals) withdraw(id);
    for (const auto& [id, swarm] : swarms) {
      if (swarm->complete() || swarm->downloading()) swarm->announce();
    }
  }

  std::shared_ptr<Swarm> lookup(const FileId& id) {
    auto it = swarms.find(id);
    return it == swarms.end() ? nullptr : it->second;
  }

  void accept() {
    accept_each(
        acceptor, [self = shared_from_this()] { return self->stopping; },
        [self = shared_from_this()](asio::ip::tcp::socket socket) { self->on_accept(std::move(socket)); });
  }

  void on_accept(asio::ip::tcp::socket socket) {
    if (connections.size() >= config.max_connections) {
      // Peer links take over their connection's close handler: drop the
      // closed ones here, where the count matters.
      std::erase_if(connections, [](const auto& c) { return c->closed(); });
    }
    if (connections.size() >= config.max_connections) {
      std::error_code ignored;
      socket.close(ignored);
      return;
    }
    wire::tune_socket(socket);
    wire::ConnectionOptions options;
    options.limits = protocol::kHelloLimits;
    options.timeouts.first_frame = std::chrono::seconds(10);
    auto connection = wire::Connection::create(std::move(socket), *server_tls, tls::Side::server, options);
    connections.insert(connection);
    std::weak_ptr<wire::Connection> weak = connection;
    auto forget = [self = shared_from_this(), weak](const std::string&) {
      if (auto c = weak.lock()) self->connections.erase(c);
    };
    connection->start(
        [self = shared_from_this(), weak, forget](std::string_view message, std::uint32_t) {
          auto c = weak.lock();
          if (!c) return;
          pb::Hello hello;
          try {
            hello = protocol::parse_hello(message);
          } catch (const Error& e) {
            c->close(e.what());
            return;
          }
          if (hello.plane() == pb::PLANE_PEER) {
            auto link = PeerLink::accept(
                *self->services, c, [self](const FileId& id) { return self->lookup(id); }, message);
            // The link took the close handler; keep counting the connection.
            return;
          }
          if (hello.plane() == pb::PLANE_CONTROL) {
            self->start_control(c, hello);
            return;
          }
          c->close("unknown plane");
        },
        forget);
  }

  // --- control plane -----------------------------------------------------

  void start_control(const std::shared_ptr<wire::Connection>& c, const pb::Hello& hello) {
    const auto& given = hello.cookie();
    if (!constant_time_equal(std::span(reinterpret_cast<const std::uint8_t*>(given.data()), given.size()),
                             std::span(reinterpret_cast<const std::uint8_t*>(cookie.data()), cookie.size()))) {
      log::warn("refused a control connection from {}: wrong cookie", c->remote().address().to_string());
      c->send_and_close(encode(error_response(Errc::unauthorized,
                                              "not authorized: the control cookie does not match (is --data-dir the "
                                              "peer-server's?)")),
                        "bad cookie");
      return;
    }
    c->set_limits(protocol::kControlRequestLimits);
    // The owner's client waits quietly while a file hashes or downloads.
    wire::Timeouts quiet;
    quiet.idle = std::chrono::hours(24 * 365);
    c->set_timeouts(quiet);
    std::weak_ptr<wire::Connection> weak = c;
    // Lives as long as the connection's handler: the answers' weak way back.
    auto sink = std::make_shared<ConnectionSink>(c);
    c->start(
        [self = shared_from_this(), weak, sink](std::string_view message, std::uint32_t) {
          auto conn = weak.lock();
          if (!conn) return;
          pb::ControlRequest request;
          if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
            conn->send_and_close(encode(error_response(Errc::protocol, "malformed control request")), "malformed");
            return;
          }
          self->handle_control(sink, request);
        },
        [self = shared_from_this(), weak](const std::string&) {
          if (auto conn = weak.lock()) self->connections.erase(conn);
        });
    pb::ControlResponse accepted;
    accepted.mutable_done();
    c->send(encode(accepted));
  }

  void handle_control(const std::shared_ptr<ControlSink>& c, const pb::ControlRequest& request) {
    try {
      switch (request.body_case()) {
        case pb::ControlRequest::kRegisterFile:
          return register_file(c, request.register_file().path(), request.register_file().group(),
                               request.register_file().has_replicas()
                                   ? std::optional<std::uint32_t>(request.register_file().replicas())
                                   : std::nullopt);
        case pb::ControlRequest::kRequestFile:
          return request_file(c, request.request_file());
        case pb::ControlRequest::kStopSharing:
          return stop_sharing(c, request.stop_sharing().file_id());
        case pb::ControlRequest::kStatus:
          return status(c);
        case pb::ControlRequest::kDescribeFile:
          return describe_file(c, request.describe_file().file_id());
        case pb::ControlRequest::BODY_NOT_SET:
          break;
        default:
          return account(c, request);
      }
      throw Error(Errc::protocol, "unknown control request");
    } catch (const Error& e) {
      c->send(encode(error_response(e.code(), e.what())));
    }
  }

  // --- accounts ------------------------------------------------------------

  // Forwards an account request to the central server as the logged-in user
  // and answers with what it says; login and logout also keep the session.
  void account(const std::shared_ptr<ControlSink>& c, const pb::ControlRequest& request) {
    pb::CentralRequest forward;
    switch (request.body_case()) {
      case pb::ControlRequest::kCreateUser:
        *forward.mutable_create_user() = request.create_user();
        break;
      case pb::ControlRequest::kLogin:
        *forward.mutable_login() = request.login();
        break;
      case pb::ControlRequest::kLogout:
        if (user.empty()) throw Error(Errc::unauthorized, "nobody is logged in");
        forward.mutable_logout();
        break;
      case pb::ControlRequest::kWhoami: {
        if (user.empty()) throw Error(Errc::unauthorized, "nobody is logged in");
        pb::ControlResponse response;
        response.mutable_account()->set_user(user);
        return c->send(encode(response));
      }
      case pb::ControlRequest::kCreateGroup:
        *forward.mutable_create_group() = request.create_group();
        break;
      case pb::ControlRequest::kListGroups:
        *forward.mutable_list_groups() = request.list_groups();
        break;
      case pb::ControlRequest::kJoinGroup:
        *forward.mutable_join_group() = request.join_group();
        break;
      case pb::ControlRequest::kListRequests:
        *forward.mutable_list_requests() = request.list_requests();
        break;
      case pb::ControlRequest::kAcceptRequest:
        *forward.mutable_accept_request() = request.accept_request();
        break;
      case pb::ControlRequest::kRejectRequest:
        *forward.mutable_reject_request() = request.reject_request();
        break;
      case pb::ControlRequest::kLeaveGroup:
        *forward.mutable_leave_group() = request.leave_group();
        break;
      case pb::ControlRequest::kListFiles:
        *forward.mutable_list_files() = request.list_files();
        break;
      default:
        throw Error(Errc::protocol, "unknown control request");
    }
    const bool needs_user = !forward.has_create_user() && !forward.has_login();
    if (needs_user && user.empty()) throw Error(Errc::unauthorized, "nobody is logged in: log in first");
    if (needs_user) forward.set_session(services->session);
    const bool login = forward.has_login();
    const bool logout = forward.has_logout();
    services->central->request(
        std::move(forward), [weak = weak_from_this(), c, login, logout](auto response, const std::string& error) {
          auto self = weak.lock();
          if (!self) return;
          if (logout) self->forget_session();  // here at least, whatever the central server says
          if (!response) {
            return c->send(encode(error_response(
                Errc::unavailable,
                logout ? "logged out here, but the central server could not be told: " + error : error)));
          }
          if (response->has_error())
            return c->send(encode(error_response(errc_of(response->error()), response->error().message())));
          pb::ControlResponse answer;
          if (login && response->has_logged_in()) {
            try {
              self->remember_session(response->logged_in().user(), response->logged_in().session());
            } catch (const Error& e) {
              return c->send(encode(error_response(e.code(), e.what())));
            }
            answer.mutable_account()->set_user(self->user);
          } else if (response->has_account()) {
            *answer.mutable_account() = response->account();
          } else if (response->has_group_list()) {
            *answer.mutable_group_list() = response->group_list();
          } else if (response->has_user_list()) {
            *answer.mutable_user_list() = response->user_list();
          } else if (response->has_file_list()) {
            *answer.mutable_file_list() = response->file_list();
          } else if (response->has_ok()) {
            answer.mutable_done();
          } else {
            return c->send(encode(error_response(Errc::protocol, "unexpected answer from the central server")));
          }
          c->send(encode(answer));
        });
  }

  void remember_session(const std::string& name, const std::string& token) {
    if (accounts::name_error("user", name) || token.size() != 32) {
      throw Error(Errc::protocol, "the central server sent a malformed session");
    }
    save_session(config.data_dir / kSessionFile, SavedSession{name, token});
    user = name;
    services->session = token;
  }

  void forget_session() {
    user.clear();
    services->session.clear();
    std::error_code ignored;
    std::filesystem::remove(config.data_dir / kSessionFile, ignored);
  }

  void register_file(const std::shared_ptr<ControlSink>& c, const std::string& path_text, const std::string& group,
                     std::optional<std::uint32_t> replicas) {
    const std::filesystem::path path(path_text);
    if (!path.is_absolute()) throw Error(Errc::bad_request, "the path must be absolute");
    if (replicas && *replicas > kMaxReplicas) {
      throw Error(Errc::bad_request, fmt::format("--replicas must be 0..{}", kMaxReplicas));
    }
    if (replicas && !group.empty()) {
      throw Error(Errc::bad_request, "--replicas is for public files: volunteers cannot fetch a group's file");
    }
    if (!group.empty()) {
      if (auto error = accounts::name_error("group", group)) throw Error(Errc::bad_request, *error);
      if (user.empty()) throw Error(Errc::unauthorized, "nobody is logged in: log in to share with a group");
    }
    // Hashing a large file takes seconds: off the network thread.
    auto self = shared_from_this();
    asio::post(disk, [self, c, path, group, replicas] {
      std::optional<Manifest> manifest;
      std::optional<store::FileIdentity> identity;
      std::string error;
      Errc code = Errc::io;
      try {
        identity = store::identity_of(path);
        manifest = build_manifest(path, 0);
        // The stamp every later read is held to: it must be the one the
        // hashes describe, so the file may not move while it is hashed.
        if (!identity || store::identity_of(path) != identity) {
          manifest.reset();
          error = fmt::format("{} changed while it was hashed: register it again once it is complete", path.string());
        }
      } catch (const Error& e) {
        error = e.what();
        code = e.code();
      } catch (const std::exception& e) {
        error = e.what();
      }
      asio::post(self->io,
                 [self, c, path, manifest = std::move(manifest), identity, error, code, group, replicas]() mutable {
                   if (!manifest) return c->send(encode(error_response(code, error)));
                   if (group.empty() && replicas && *replicas > 0) {
                     return self->add_replicated_share(c, path, *manifest, *identity, *replicas);
                   }
                   if (group.empty()) return self->add_shared(c, path, std::move(*manifest), *identity, {}, replicas);
                   self->add_group_share(c, path, *manifest, *identity, group);
                 });
    });
  }

  // A replica target needs the central server's word too (it may refuse
  // one past this peer's budget): asked first, with the announcement itself.
  void add_replicated_share(const std::shared_ptr<ControlSink>& c, const std::filesystem::path& path,
                            const Manifest& manifest, const store::FileIdentity& identity, std::uint32_t replicas) {
    pb::CentralRequest announce;
    manifest_to_wire(manifest, announce.mutable_announce()->mutable_manifest());
    announce.mutable_announce()->set_replicas(replicas);
    announce_then(c, std::move(announce), [c, path, manifest, identity, replicas](Impl& self) {
      self.add_shared(c, path, manifest, identity, {}, replicas);
    });
  }

  // Sends `announce` to the central server; on its yes `then` runs, and its
  // no (or no answer) is the control answer.
  template <typename Then>
  void announce_then(const std::shared_ptr<ControlSink>& c, pb::CentralRequest&& announce, Then&& then) {
    services->central->request(std::move(announce), [weak = weak_from_this(), c, then = std::forward<Then>(then)](
                                                        auto response, const std::string& error) {
      auto self = weak.lock();
      if (!self) return;
      if (!response) return c->send(encode(error_response(Errc::unavailable, error)));
      if (response->has_error()) {
        return c->send(encode(error_response(errc_of(response->error()), response->error().message())));
      }
      then(*self);
    });
  }

  // A group share needs the central server's word that the user is a
  // member before it is kept: asked first, with the announcement itself.
  void add_group_share(const std::shared_ptr<ControlSink>& c, const std::filesystem::path& path,
                       const Manifest& manifest, const store::FileIdentity& identity, const std::string& group) {
    const FileId id = manifest.file_id();
    std::vector<std::string> groups{group};
    if (auto existing = lookup(id); existing && seeding(*existing)) {
      if (existing->groups().empty()) {
        return c->send(encode(error_response(
            Errc::bad_request, fmt::format("{} is already shared publicly; stop-sharing it first to share it with a "
                                           "group only",
                                           to_hex(id)))));
      }
      for (const auto& g : existing->groups()) {
        if (g != group && groups.size() < 8) groups.push_back(g);
      }
    }
    pb::CentralRequest announce;
    manifest_to_wire(manifest, announce.mutable_announce()->mutable_manifest());
    for (const auto& g : groups) announce.mutable_announce()->add_groups(g);
    announce.set_session(services->session);
    announce_then(c, std::move(announce), [c, path, manifest, identity, groups](Impl& self) {
      self.add_shared(c, path, manifest, identity, groups);
    });
  }

  void add_shared(const std::shared_ptr<ControlSink>& c, const std::filesystem::path& path, Manifest manifest,
                  const store::FileIdentity& identity, const std::vector<std::string>& groups,
                  std::optional<std::uint32_t> replicas = std::nullopt) {
    const FileId id = manifest.file_id();
    auto existing = lookup(id);
    // Registering a file this peer holds as a cache copy makes it the owner's.
    if (existing && existing->cached()) forget_replica_record(id);
    if (existing && existing->downloading()) {
      // We were downloading these very bytes: the local copy wins.
      existing->shutdown(false);
      existing->discard_partial();
      state->remove_download(id);
      swarms.erase(id);
      existing.reset();
    }
    try {
      state->put_shared(SharedRecord{manifest, path, existing ? existing->uploaded() : 0, groups});
    } catch (const Error& e) {
      if (!c) return log::error("cannot share {}: {}", path.string(), e.what());
      return c->send(encode(error_response(e.code(), e.what())));
    }
    if (existing) {
      existing->save_uploaded();
      existing->shutdown(false);
    }
    auto swarm = Swarm::seed(*services, manifest, path, existing ? existing->uploaded() : 0);
    swarm->set_groups(groups);
    // Without --replicas, a file registered again keeps the target it had.
    if (replicas) {
      if (*replicas > 0) {
        save_replica_record(id, ReplicaRecord{*replicas, false, 0});
      } else {
        forget_replica_record(id);
      }
      swarm->set_replicas(*replicas);
    } else if (auto record = replica_records.find(id); record != replica_records.end() && !record->second.cached) {
      swarm->set_replicas(record->second.replicas);
    }
    swarms[id] = swarm;
    remember_identity(id, identity);
    swarm->announce();
    log::info("sharing {} as {}", path.string(), to_hex(id));
    if (!c) return;  // from a shared folder
    pb::ControlResponse response;
    auto* out = response.mutable_registered();
    out->set_file_id(to_bytes(id));
    out->set_name(manifest.name);
    out->set_size(manifest.size);
    out->set_chunk_size(manifest.chunk_size);
    out->set_chunks(manifest.chunk_count());
    c->send(encode(response));
  }

  // `checked`: the file this peer shares was just checked against the disk
  // (a file deleted or changed under us is withdrawn and fetched again, never
  // answered with its stale path).
  void request_file(const std::shared_ptr<ControlSink>& c, const pb::RequestFile& request, bool checked = false) {
    auto id = file_id_from_bytes(request.file_id());
    if (!id) throw Error(Errc::bad_request, "the file id must be 64 hex digits");
    std::filesystem::path out(request.out_path());
    if (!out.empty() && (!out.is_absolute() || !out.has_filename())) {
      throw Error(Errc::bad_request, "--out must name a file");
    }
    if (request.stream() && !c->connection()) {
      throw Error(Errc::bad_request, "a stream is answered on the control plane only; over HTTP, GET /files/ID");
    }
    auto swarm = lookup(*id);
    if (swarm && seeding(*swarm) && !checked) {
      check_file(*id, [self = shared_from_this(), c, request] {
        try {
          self->request_file(c, request, true);
        } catch (const Error& e) {
          c->send(encode(error_response(e.code(), e.what())));
        }
      });
      return;
    }
    if (swarm && seeding(*swarm) && request.stream()) {
      start_stream(c->connection(), swarm, request.stream_payloads());
      return;
    }
    if (swarm && seeding(*swarm)) {
      if (!out.empty() && out != swarm->path()) {
        throw Error(Errc::bad_request, fmt::format("this peer already has the file at {}", swarm->path().string()));
      }
      pb::ControlResponse response;
      auto* done = response.mutable_downloaded();
      done->set_file_id(to_bytes(*id));
      done->set_path(swarm->path().string());
      done->set_size(swarm->manifest().size);
      c->send(encode(response));
      return;
    }
    if (swarm) {
      watch(c, swarm, request);
      swarm->start_download(request.wait_for_holders());
      return;
    }
    // A new download: the manifest comes from the central server, and is
    // checked against the id we asked for before anything is trusted.
    pb::CentralRequest get;
    get.mutable_get_file()->set_file_id(to_bytes(*id));
    if (!services->session.empty()) get.set_session(services->session);  // a group's file: members only
    auto self = shared_from_this();
    services->central->request(std::move(get), [self, c, id = *id, out, request](auto response,
                                                                                 const std::string& error) {
      if (!response) {
        return c->send(encode(error_response(Errc::unavailable, error)));
      }
      if (response->has_error()) {
        const auto code = response->error().code() == pb::ERROR_NOT_FOUND ? Errc::not_found : Errc::unavailable;
        return c->send(encode(error_response(code, fmt::format("the central server knows no file {}", to_hex(id)))));
      }
      if (!response->has_file()) return c->send(encode(error_response(Errc::protocol, "unexpected answer")));
      Manifest manifest;
      try {
        manifest = manifest_from_wire(response->file().manifest());
      } catch (const Error& e) {
        return c->send(encode(error_response(Errc::verification, std::string("bad metadata: ") + e.what())));
      }
      if (manifest.file_id() != id) {
        return c->send(
            encode(error_response(Errc::verification, "the central server's metadata does not match the file id")));
      }
      if (auto refused = self->check_handoff(request, id, manifest)) {
        return c->send(encode(error_response(Errc::verification, *refused)));
      }
      if (auto again = self->lookup(id)) {  // started meanwhile by another request
        self->watch(c, again, request);
        again->start_download(request.wait_for_holders());
        return;
      }
      DownloadRecord record;
      // A link's name is metadata from a stranger, like the central server's.
      const std::string safe =
          store::sanitize_name(request.name().empty() ? manifest.name : request.name(), to_hex(id));
      manifest.name = safe;
      record.manifest = std::move(manifest);
      if (out.empty()) {
        record.directory = self->config.download_dir;
        record.destination = self->config.download_dir / safe;
        record.replace = false;
      } else {
        record.directory = out.parent_path();
        record.destination = out;
        record.replace = true;
      }
      record.have = Bitfield(record.manifest.chunk_count());
      auto started = Swarm::download(*self->services, std::move(record));
      self->swarms[id] = started;
      self->watch(c, started, request);
      started->start_download(request.wait_for_holders());
    });
  }

  // What a share link or a manifest file adds to a request (request-file
  // --link / --manifest): its central server must be ours (the key ours
  // proved is the one it names), its size the file's, and a manifest file's
  // hashes, once they give the id, are the ones the download checks chunks
  // against. The refusal in one line, or nullopt; `manifest` becomes the
  // manifest file's when there is one.
  std::optional<std::string> check_handoff(const pb::RequestFile& request, const FileId& id, Manifest& manifest) {
    if (!request.central_fingerprint().empty()) {
      const auto& key = services->central->central_key();
      const std::string wanted =
          to_hex(std::span(reinterpret_cast<const std::uint8_t*>(request.central_fingerprint().data()),
                           request.central_fingerprint().size()));
      // Any central server of our list will do: the one in use, or another
      // whose key is recorded (each may have its own).
      bool same = false;
      if (tls::KeyHash named{}; request.central_fingerprint().size() == named.size()) {
        std::memcpy(named.data(), request.central_fingerprint().data(), named.size());
        same = services->central->trusts(named);
      }
      if (!same) {
        return fmt::format(
            "refused: the link names the central server {} with key fingerprint {}, but this peer-server's central "
            "server {} has key fingerprint {} (start a peer-server with --central-server-addr {})",
            store::display_name(request.central_addr()), wanted, services->central->address().to_string(),
            key ? tls::fingerprint_of(*key) : std::string("unknown"), store::display_name(request.central_addr()));
      }
    }
    if (request.has_manifest()) {
      Manifest given;
      try {
        given = manifest_from_wire(request.manifest());
      } catch (const Error& e) {
        return std::string("the manifest file: ") + e.what();
      }
      if (given.file_id() != id) return std::string("the manifest file does not give the file id asked for");
      manifest.chunk_hashes = std::move(given.chunk_hashes);
    }
    if (request.has_size() && request.size() != manifest.size) {
      return fmt::format("the link says {} bytes, but file {} has {}", request.size(), to_hex(id), manifest.size);
    }
    return std::nullopt;
  }

  void watch(const std::shared_ptr<ControlSink>& c, const std::shared_ptr<Swarm>& swarm,
             const pb::RequestFile& request) {
    if (request.sequential()) swarm->set_sequential();
    std::weak_ptr<ControlSink> weak = c;
    // The identity a finished download is held to, taken as it finishes. One
    // that finishes with nobody watching (resumed at start) has none: the
    // next sweep hashes it once and records it.
    Observer stamp;
    stamp.progress = [](const pb::Progress&) {};
    stamp.finished = [weak_self = weak_from_this()](const DownloadOutcome& outcome) {
      auto self = weak_self.lock();
      const auto* done = std::get_if<pb::Downloaded>(&outcome);
      if (!self || done == nullptr) return;
      auto id = file_id_from_bytes(done->file_id());
      if (!id) return;
      if (auto identity = store::identity_of(std::filesystem::path(done->path()))) {
        self->remember_identity(*id, *identity);
      }
    };
    swarm->add_observer(std::move(stamp));
    if (request.stream()) {
      start_stream(c->connection(), swarm, request.stream_payloads());
      return;
    }
    Observer observer;
    observer.progress = [weak](const pb::Progress& progress) {
      auto conn = weak.lock();
      // A client that does not read its progress does not get more of it.
      if (!conn || conn->closed() || conn->queued_bytes() > std::size_t{64} * 1024) return;
      pb::ControlResponse response;
      *response.mutable_progress() = progress;
      conn->send(encode(response));
    };
    observer.finished = [weak](const DownloadOutcome& outcome) {
      auto conn = weak.lock();
      if (!conn || conn->closed()) return;
      // The failure's own code, from the disk job or the swarm that failed:
      // it becomes the client's error (and request-file --json's "code").
      if (const auto* failure = std::get_if<Failure>(&outcome)) {
        conn->send(encode(error_response(failure->code, failure->message)));
        return;
      }
      pb::ControlResponse response;
      *response.mutable_downloaded() = std::get<pb::Downloaded>(outcome);
      conn->send(encode(response));
    };
    swarm->add_observer(std::move(observer));
  }

  void stop_sharing(const std::shared_ptr<ControlSink>& c, const std::string& raw_id) {
    auto id = file_id_from_bytes(raw_id);
    if (!id) throw Error(Errc::bad_request, "the file id must be 64 hex digits");
    auto swarm = lookup(*id);
    if (!swarm) throw Error(Errc::not_found, fmt::format("this peer does not share {}", to_hex(*id)));
    const bool was_download = swarm->downloading() || !swarm->complete();
    if (folders && !was_download) folders->forget(swarm->path());
    swarm->shutdown(true);
    swarms.erase(*id);
    identities.erase(*id);
    cache_fetching.erase(*id);
    forget_replica_record(*id);
    if (was_download) {
      // Not resumed at the next start; the partial file stays, and a later
      // request-file verifies and reuses what it holds.
      state->remove_download(*id);
    } else {
      state->remove_shared(*id);
    }
    // A stopped download keeps its partial data and resume state: a later
    // request-file picks it up.
    withdraw(*id);
    pb::ControlResponse response;
    response.mutable_done();
    c->send(encode(response));
  }

  // share-link and export-manifest: a file this peer shares or downloads,
  // and the central server it uses, with the key that server proved.
  void describe_file(const std::shared_ptr<ControlSink>& c, const std::string& raw_id) {
    auto id = file_id_from_bytes(raw_id);
    if (!id) throw Error(Errc::bad_request, "the file id must be 64 hex digits");
    auto swarm = lookup(*id);
    if (!swarm) {
      throw Error(Errc::not_found,
                  fmt::format("this peer-server neither shares nor downloads {}: register it first", to_hex(*id)));
    }
    // The central server in use, with the key it proved: a link names one.
    const cli::Address central = services->central->address();
    std::optional<tls::KeyHash> key = services->central->central_key();
    if (!key) key = config.central_fingerprint;
    if (!key) {
      throw Error(Errc::unavailable, fmt::format("not connected to the central server {} yet, so its key is not "
                                                 "known: try again in a moment",
                                                 central.to_string()));
    }
    pb::ControlResponse response;
    auto* out = response.mutable_description();
    manifest_to_wire(swarm->manifest(), out->mutable_manifest());
    out->set_central_addr(central.to_string());
    out->set_central_fingerprint(std::string(key->begin(), key->end()));
    c->send(encode(response));
  }

  void status(const std::shared_ptr<ControlSink>& c) {
    pb::ControlResponse response;
    auto* out = response.mutable_status();
    out->set_peer_id(to_bytes(services->self));
    out->set_listen_addr(bound.to_string());
    out->set_central_connected(services->central->registered());
    out->set_central_addr(services->central->address().to_string());
    out->set_user(user);
    out->set_cache_limit(config.cache_limit);
    out->set_cache_used(cache_used());
    for (const auto& [id, swarm] : swarms) {
      if (seeding(*swarm)) {
        auto* shared = out->add_shared();
        shared->set_file_id(to_bytes(id));
        shared->set_name(swarm->manifest().name);
        shared->set_path(swarm->path().string());
        shared->set_size(swarm->manifest().size);
        shared->set_uploaded(swarm->uploaded());
        shared->set_cached(swarm->cached());
        if (auto record = replica_records.find(id); record != replica_records.end()) {
          if (!record->second.cached) shared->set_replicas(record->second.replicas);
          if (record->second.cached) shared->set_last_used_ms(record->second.last_used_ms);
        }
        if (folders) {
          if (auto folder = folders->folder_of(swarm->path())) shared->set_folder(folder->string());
        }
      } else {
        auto* download = out->add_downloads();
        download->set_file_id(to_bytes(id));
        download->set_name(swarm->manifest().name);
        download->set_path(swarm->path().string());
        download->set_size(swarm->manifest().size);
        download->set_have_bytes(swarm->have_bytes());
        download->set_peers(static_cast<std::uint32_t>(swarm->link_count()));
        download->set_state(swarm->state_text());
        download->set_bytes_received(swarm->bytes_received());
      }
    }
    if (folders) {
      for (const auto& f : folders->status()) {
        auto* folder = out->add_folders();
        folder->set_path(f.path.string());
        folder->set_files(f.files);
        folder->set_pending(f.pending);
        folder->set_skipped(f.skipped);
        folder->set_hashed(f.hashed);
        folder->set_reused(f.reused);
      }
    }
    c->send(encode(response));
  }

  // --- shared folders ----------------------------------------------------

  void unshare(const FileId& id, const std::filesystem::path& path) {
    auto swarm = lookup(id);
    // The same bytes may be shared from another path too (a copy): only this one goes.
    if (!swarm || !seeding(*swarm) || swarm->path() != path) return;
    log::info("share-dir: {} is gone or changed: no longer shared as {}", path.string(), to_hex(id));
    swarm->shutdown(false);
    swarms.erase(id);
    identities.erase(id);
    try {
      state->remove_shared(id);
    } catch (const Error& e) {
      log::error("cannot forget {}: {}", to_hex(id), e.what());
    }
    withdraw(id);
  }

  bool move_shared(const FileId& id, const std::filesystem::path& path, const store::FileIdentity& identity) {
    auto swarm = lookup(id);
    if (!swarm || !seeding(*swarm)) return false;
    swarm->save_uploaded();
    try {
      state->put_shared(SharedRecord{swarm->manifest(), path, swarm->uploaded(), swarm->groups()});
    } catch (const Error& e) {
      log::error("cannot record {} at {}: {}", to_hex(id), path.string(), e.what());
      return false;
    }
    // A fresh seed: its reader is held to the new path and identity.
    swarm->shutdown(false);
    auto fresh = Swarm::seed(*services, swarm->manifest(), path, swarm->uploaded());
    fresh->set_groups(swarm->groups());  // a group's file stays the group's under its new name
    swarms[id] = std::move(fresh);
    remember_identity(id, identity);
    return true;
  }

  void start_folders() {
    if (config.share_dirs.empty()) return;
    FolderHost host;
    std::weak_ptr<Impl> weak = weak_from_this();
    host.share = [weak](const std::filesystem::path& path, Manifest manifest, const store::FileIdentity& identity) {
      auto self = weak.lock();
      if (!self || self->stopping) return;
      // A folder shares what it finds publicly, except bytes this peer
      // already shares with groups (register-file --group of a file in the
      // folder, or the same bytes elsewhere): those stay the groups' only.
      // Making them public takes stop-sharing, then register-file without
      // --group: never a file that lands in a folder.
      std::vector<std::string> groups;
      if (auto existing = self->lookup(manifest.file_id()); existing && !existing->groups().empty()) {
        groups = existing->groups();
        log::info("{} has the bytes of a file shared with group(s) {} only: it stays theirs", path.string(),
                  fmt::join(groups, ", "));
      }
      self->add_shared(nullptr, path, std::move(manifest), identity, groups);
    };
    host.unshare = [weak](const FileId& id, const std::filesystem::path& path) {
      if (auto self = weak.lock(); self && !self->stopping) self->unshare(id, path);
    };
    host.moved = [weak](const FileId& id, const std::filesystem::path& path, const store::FileIdentity& identity) {
      auto self = weak.lock();
      return self && !self->stopping && self->move_shared(id, path, identity);
    };
    folders = std::make_shared<FolderWatcher>(io, disk, config.share_dirs, std::move(host));
    std::map<std::filesystem::path, KnownFile> known;
    for (const auto& [id, swarm] : swarms) {
      if (!seeding(*swarm) || !folders->folder_of(swarm->path())) continue;
      auto identity = identities.find(id);
      known[swarm->path()] =
          KnownFile{id, identity == identities.end() ? std::nullopt : std::optional(identity->second)};
    }
    folders->start(known);
  }
};

PeerServer::PeerServer(asio::io_context& io, PeerConfig config)
    : impl_(std::make_shared<Impl>(io, std::move(config))) {}

PeerServer::~PeerServer() {
  impl_->disk.join();
}

cli::Address PeerServer::start() {
  auto& impl = *impl_;
  impl.load();
  impl.bound = listen_on(impl.acceptor, impl.config.listen);

  impl.make_services(impl.bound.port);
  impl.identities = impl.state->shared_identities();
  impl.replica_records = impl.state->replica_records();
  const auto replica_of = [&impl](const FileId& id) -> const ReplicaRecord* {
    auto it = impl.replica_records.find(id);
    return it == impl.replica_records.end() ? nullptr : &it->second;
  };
  for (auto& record : impl.state->shared_files()) {
    const FileId id = record.manifest.file_id();
    auto swarm = Swarm::seed(*impl.services, std::move(record.manifest), record.path, record.uploaded);
    swarm->set_groups(std::move(record.groups));
    if (const auto* replica = replica_of(id)) {
      if (replica->cached) {
        swarm->set_cached(true);
        // Bytes served in earlier runs are no use now: only new ones move
        // the copy in the LRU order (touch_served_cache).
        impl.cache_uploaded_seen[id] = swarm->uploaded();
      } else {
        swarm->set_replicas(replica->replicas);
      }
    }
    impl.swarms[id] = swarm;
  }
  std::vector<std::shared_ptr<Swarm>> resumed;
  for (auto& record : impl.state->downloads()) {
    const FileId id = record.manifest.file_id();
    if (impl.swarms.count(id)) continue;
    auto swarm = Swarm::download(*impl.services, std::move(record));
    // A cache fetch cut by a stop goes on; the central server hears of it when it completes.
    if (const auto* replica = replica_of(id); replica != nullptr && replica->cached) swarm->set_cached(true);
    impl.swarms[id] = swarm;
    resumed.push_back(swarm);
  }
  if (impl.volunteer()) {
    std::error_code ec;
    std::filesystem::create_directories(impl.config.cache_dir, ec);
    if (ec) {
      throw Error(Errc::io,
                  fmt::format("--cache-dir {}: cannot create it: {}", impl.config.cache_dir.string(), ec.message()));
    }
  }
  impl.start_replicas();
  impl.accept();
  if (impl.config.http) impl.start_http();
  impl.services->central->start();
  impl.upload_timer = std::make_unique<asio::steady_timer>(impl.io);
  impl.save_uploads_periodically();
  impl.file_timer = std::make_unique<asio::steady_timer>(impl.io);
  impl.check_files_periodically();
  impl.start_folders();
  // Unfinished downloads go on by themselves.
  for (const auto& swarm : resumed) swarm->start_download(false);
  return impl.bound;
}

void PeerServer::stop() {
  asio::post(impl_->io, [impl = impl_] {
    if (impl->stopping) return;
    impl->stopping = true;
    std::error_code ignored;
    impl->acceptor.close(ignored);
    if (impl->http_server) impl->http_server->stop();
    if (impl->upload_timer) impl->upload_timer->cancel();
    if (impl->file_timer) impl->file_timer->cancel();
    if (impl->folders) impl->folders->stop();
    for (const auto& [id, swarm] : impl->swarms) swarm->shutdown(true);
    auto connections = impl->connections;
    for (const auto& c : connections) c->close("server shutting down");
    if (impl->services) impl->services->central->stop();
  });
}

std::optional<cli::Address> PeerServer::http_address() const {
  return impl_->http_bound;
}

}  // namespace p2pshare::peer
