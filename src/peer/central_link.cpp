#include "peer/central_link.hpp"

#include <fstream>

#include <fmt/format.h>

#include "p2pshare/error.hpp"
#include "p2pshare/log.hpp"
#include "p2pshare/protocol.hpp"

namespace p2pshare::peer {
namespace {

// The key recorded for `address` in DATA_DIR/known_centrals, if any.
std::optional<tls::KeyHash> recorded_key(const std::filesystem::path& data_dir, const std::string& address) {
  std::ifstream in(data_dir / tls::kKnownCentralsFile);
  std::string line;
  for (int lines = 0; lines < 10000 && std::getline(in, line); ++lines) {
    const auto space = line.find(' ');
    if (space != std::string::npos && line.substr(0, space) == address) {
      return tls::key_hash_from_fingerprint(line.substr(space + 1));
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<tls::KeyHash> CentralLink::trusted_key() {
  if (!trusted_key_)
    trusted_key_ = trust_.pinned ? trust_.pinned : recorded_key(trust_.data_dir, address().to_string());
  return trusted_key_;
}

bool CentralLink::trusts(const tls::KeyHash& key) {
  if (trust_.pinned) return *trust_.pinned == key;
  if (central_key_ && *central_key_ == key) return true;
  for (const auto& central : centrals_) {
    if (recorded_key(trust_.data_dir, central.to_string()) == key) return true;
  }
  return false;
}

CentralLink::CentralLink(asio::io_context& io, std::vector<cli::Address> centrals, Trust trust,
                         std::uint16_t listen_port, std::function<void()> on_registered)
    : io_(io),
      centrals_(std::move(centrals)),
      trust_(std::move(trust)),
      listen_port_(listen_port),
      on_registered_(std::move(on_registered)),
      peer_id_(trust_.self),
      timer_(io),
      waiting_timer_(io) {
  if (centrals_.empty()) throw Error(Errc::usage, "no central server given");
}

void CentralLink::start() {
  connect();
}

void CentralLink::stop() {
  stopped_ = true;
  timer_.cancel();
  waiting_timer_.cancel();
  if (connection_) connection_->close("shutting down");
  for (auto& w : waiting_) w.callback(std::nullopt, "shutting down");
  waiting_.clear();
}

void CentralLink::connect() {
  if (stopped_) return;
  auto resolver = std::make_shared<asio::ip::tcp::resolver>(io_);
  auto socket = std::make_shared<asio::ip::tcp::socket>(io_);
  auto deadline = std::make_shared<asio::steady_timer>(io_, std::chrono::seconds(5));
  deadline->async_wait([socket, resolver](const std::error_code& ec) {
    if (!ec) {
      resolver->cancel();
      std::error_code ignored;
      socket->close(ignored);
    }
  });
  resolver->async_resolve(
      address().host, std::to_string(address().port),
      [self = shared_from_this(), resolver, socket, deadline](const std::error_code& ec, auto endpoints) {
        if (ec) {
          deadline->cancel();
          self->last_error_ = fmt::format("cannot resolve {}: {}", self->address().to_string(), ec.message());
          self->fail_over(self->last_error_);
          return;
        }
        asio::async_connect(*socket, endpoints, [self, socket, deadline](const std::error_code& e, const auto&) {
          deadline->cancel();
          if (e) {
            self->last_error_ = fmt::format("cannot reach the central server at {}: {}", self->address().to_string(),
                                            e == asio::error::operation_aborted ? "timed out" : e.message());
            self->fail_over(self->last_error_);
            return;
          }
          self->on_connected(std::move(*socket));
        });
      });
}

void CentralLink::retry_later() {
  if (stopped_) return;
  timer_.expires_after(backoff_);
  backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, std::chrono::seconds(5));
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (!ec) self->connect();
  });
}

void CentralLink::fail_over(const std::string& why) {
  if (stopped_) return;
  ++failed_attempts_;
  if (centrals_.size() > 1) {
    const std::string from = address().to_string();
    current_ = (current_ + 1) % centrals_.size();
    // The key proved by the one we leave is not the next one's.
    central_key_.reset();
    if (failed_attempts_ == 1) {
      log::warn("central server {} stopped answering ({}); using {}", from, why, address().to_string());
    } else {
      log::debug("central server {} does not answer ({}); trying {}", from, why, address().to_string());
    }
  }
  if (failed_attempts_ % centrals_.size() != 0) {
    // The next one of the round at once.
    timer_.expires_after(std::chrono::milliseconds(0));
    timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
      if (!ec) self->connect();
    });
    return;
  }
  if (!outage_logged_ && centrals_.size() > 1) {
    outage_logged_ = true;
    log::warn("no central server answers ({}): trying the list again, waiting up to 5 s between rounds",
              cli::to_string(centrals_));
  }
  retry_later();
}

void CentralLink::on_connected(asio::ip::tcp::socket socket) {
  if (stopped_) return;
  wire::tune_socket(socket);
  wire::ConnectionOptions options;
  options.limits = protocol::kCentralLimits;
  options.timeouts.first_frame = std::chrono::seconds(10);
  options.timeouts.idle = std::chrono::hours(24);  // we heartbeat; silence from the server is fine
  connection_ = wire::Connection::create(std::move(socket), *trust_.context, tls::Side::client, options);
  auto self = shared_from_this();
  // Nothing is sent to a central server whose key is not the one we trust.
  connection_->set_verify([self](const wire::Connection& c) -> std::string {
    std::string refused;
    if (!c.peer_key()) {
      refused = fmt::format("central server {} presented no certificate", self->address().to_string());
    } else {
      try {
        refused = tls::check_central_key(self->address().to_string(), *c.peer_key(), self->trust_.pinned,
                                         self->trust_.data_dir)
                      .value_or("");
      } catch (const Error& e) {
        refused = e.what();
      }
    }
    if (!refused.empty()) {
      self->last_error_ = refused;
      log::error("{}", refused);
    } else {
      self->central_key_ = *c.peer_key();
      self->trusted_key_ = *c.peer_key();
    }
    return refused;
  });
  connection_->start([self](std::string_view message, std::uint32_t) { self->on_frame(message); },
                     [self](const std::string& reason) { self->on_closed(reason); });
  connection_->send(protocol::hello(pb::PLANE_CENTRAL));
  pb::CentralRequest reg;
  reg.mutable_register_()->set_listen_port(listen_port_);
  send(std::move(reg), [self](std::optional<pb::CentralResponse> response, const std::string& error) {
    if (!response || !response->has_registered()) {
      self->last_error_ = response && response->has_error() ? response->error().message() : error;
      log::warn("central server refused registration: {}", self->last_error_);
      if (self->connection_) self->connection_->close("registration failed");
      return;
    }
    self->registered_ = true;
    self->backoff_ = std::chrono::milliseconds(250);
    self->failed_attempts_ = 0;
    self->outage_logged_ = false;
    self->heartbeat_interval_ = std::chrono::milliseconds(
        std::clamp<std::uint32_t>(response->registered().heartbeat_interval_ms(), 50, 3600000));
    log::info("registered with the central server {} as {}", self->address().to_string(), to_hex(self->peer_id_));
    if (self->on_registered_) self->on_registered_();
    auto waiting = std::move(self->waiting_);
    self->waiting_.clear();
    for (auto& w : waiting) self->send(std::move(w.request), std::move(w.callback));
    self->heartbeat();
  });
}

void CentralLink::heartbeat() {
  timer_.expires_after(heartbeat_interval_);
  timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec || self->stopped_ || !self->registered_) return;
    self->expire_pending();
    if (!self->registered_) return;  // it closed the connection: on_closed moves on
    pb::CentralRequest beat;
    beat.mutable_heartbeat();
    // Unanswered for three intervals (at least 2 s, at most 30 s): the
    // server has stopped answering (expire_pending closes the connection).
    const auto deadline = std::clamp<std::chrono::milliseconds>(self->heartbeat_interval_ * 3, std::chrono::seconds(2),
                                                                std::chrono::seconds(30));
    self->send(
        std::move(beat),
        [self](std::optional<pb::CentralResponse> response, const std::string&) {
          if (!response || !response->has_error() || !self->connection_) return;
          if (response->error().code() == static_cast<int>(Errc::unavailable)) {
            // Busy, or its database is down: the next one.
            self->connection_->close(fmt::format("heartbeat answered: {}", response->error().message()));
            return;
          }
          // The server forgot us (its registry expired us): register afresh.
          self->reconnect_same_ = true;
          self->connection_->close("heartbeat refused");
        },
        deadline);
    if (self->registered_) self->heartbeat();
  });
}

void CentralLink::expire_pending() {
  // A server that accepts requests but never answers must not hang a download.
  const auto now = std::chrono::steady_clock::now();
  bool expired = false;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->second.deadline > now) {
      ++it;
      continue;
    }
    expired = true;
    auto callback = std::move(it->second.callback);
    it = pending_.erase(it);
    callback(std::nullopt, fmt::format("the central server at {} did not answer in time", address().to_string()));
  }
  // It accepts requests but answers none: it has stopped answering.
  if (expired && connection_ && !connection_->closed()) connection_->close("did not answer in time");
}

void CentralLink::send(pb::CentralRequest request, Callback callback, std::chrono::milliseconds deadline) {
  if (!connection_ || connection_->closed()) {
    callback(std::nullopt, last_error_);
    return;
  }
  const auto id = next_id_++;
  request.set_request_id(id);
  pending_[id] = Pending{std::move(callback), std::chrono::steady_clock::now() + deadline};
  connection_->send(request.SerializeAsString());
}

void CentralLink::request(pb::CentralRequest request, Callback callback, std::chrono::milliseconds wait) {
  if (registered_) {
    send(std::move(request), std::move(callback));
    return;
  }
  if (stopped_ || wait.count() <= 0) {
    callback(std::nullopt, last_error_);
    return;
  }
  waiting_.push_back({std::move(request), std::move(callback), std::chrono::steady_clock::now() + wait});
  waiting_timer_.expires_after(wait);
  waiting_timer_.async_wait([self = shared_from_this()](const std::error_code& ec) {
    if (ec) return;
    const auto now = std::chrono::steady_clock::now();
    while (!self->waiting_.empty() && self->waiting_.front().deadline <= now) {
      auto w = std::move(self->waiting_.front());
      self->waiting_.pop_front();
      w.callback(std::nullopt, self->last_error_);
    }
  });
}

void CentralLink::on_frame(std::string_view message) {
  pb::CentralResponse response;
  if (!response.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
    connection_->close("malformed answer from the central server");
    return;
  }
  auto it = pending_.find(response.request_id());
  if (it == pending_.end()) {
    if (response.has_error()) log::warn("central server: {}", response.error().message());
    return;
  }
  auto callback = std::move(it->second.callback);
  pending_.erase(it);
  callback(std::move(response), "");
}

void CentralLink::on_closed(const std::string& reason) {
  const bool was_registered = registered_;
  registered_ = false;
  if (was_registered) {
    last_error_ = fmt::format("lost the central server at {}: {}", address().to_string(), reason);
    log::warn("{}", last_error_);
  }
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, p] : pending) p.callback(std::nullopt, last_error_);
  timer_.cancel();
  if (reconnect_same_) {
    reconnect_same_ = false;
    retry_later();
    return;
  }
  fail_over(was_registered ? reason : last_error_);
}

}  // namespace p2pshare::peer
