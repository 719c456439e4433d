// Shared checks for the end-to-end tests (they need Catch, so they are not in
// tests/support/cluster.hpp).
#pragma once

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <initializer_list>
#include <regex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "central.pb.h"
#include "p2pshare/protocol.hpp"
#include "p2pshare/tls.hpp"
#include "p2pshare/wire.hpp"
#include "support/cluster.hpp"
#include "support/http_client.hpp"

namespace p2pshare::test {

inline std::string describe(const RunResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout [" + r.out + "]\nstderr [" + r.err + "]";
}

// The CONTRACT's failure shape: exit status `code`, nothing on stdout, exactly
// one line on stderr that mentions every one of `words` (case-insensitive),
// and no C++ internals.
inline void check_fails(const std::string& what, const RunResult& r, int code,
                        std::initializer_list<std::string> words = {}) {
  INFO(what << "\n" << describe(r));
  CHECK(r.exit_code == code);
  CHECK(r.out.empty());
  CHECK(lines_of(r.err).size() == 1);
  CHECK((!r.err.empty() && r.err.back() == '\n'));
  for (const auto& w : words) {
    INFO("stderr should mention: " << w);
    CHECK(contains_ci(r.err, w));
  }
  CHECK_FALSE(contains_ci(r.err, "std::"));
  CHECK_FALSE(contains_ci(r.err, "exception"));
  CHECK_FALSE(contains_ci(r.err, "what()"));
}

inline bool is_file_id(const std::string& text) {
  static const std::regex hex64("^[0-9a-f]{64}$");
  return std::regex_match(text, hex64);
}

// "HOST:PORT" as host and port.
inline std::pair<std::string, std::uint16_t> split(const std::string& addr) {
  const auto colon = addr.rfind(':');
  return {addr.substr(0, colon), static_cast<std::uint16_t>(std::stoi(addr.substr(colon + 1)))};
}

// A raw central-plane client speaking the protocol by hand, presenting
// `identity`'s certificate if given.
struct RawCentral {
  explicit RawCentral(const std::string& addr, const tls::Identity* identity = nullptr)
      : client(protocol::kCentralLimits, identity) {
    auto [host, port] = split(addr);
    client.connect(host, port, std::chrono::seconds(5));
    client.send(protocol::hello(pb::PLANE_CENTRAL), std::chrono::seconds(5));
  }
  pb::CentralResponse ask(pb::CentralRequest request) {
    request.set_request_id(++id);
    client.send(request.SerializeAsString(), std::chrono::seconds(5));
    pb::CentralResponse response;
    REQUIRE(response.ParseFromString(client.receive(std::chrono::seconds(5))));
    CHECK(response.request_id() == id);
    return response;
  }
  wire::SyncClient client;
  std::uint64_t id = 0;
};

// A background command's outcome once it exits (exit -1 if it had to be
// killed after `timeout`).
inline RunResult finish_process(Process& p, std::chrono::milliseconds timeout) {
  RunResult r;
  const auto code = p.wait(timeout);
  if (!code) {
    p.signal(SIGKILL);
    p.wait();
  }
  r.exit_code = code.value_or(-1);
  r.out = p.out();
  r.err = p.err();
  return r;
}

// The HOST:PORT a server printed after "http on " (--http-addr).
inline std::string http_of(Node& node) {
  auto line = node.process->wait_for_line("http on ");
  if (!line) throw std::runtime_error(node.name + " never printed 'http on'");
  return *line;
}

// Counter or gauge `name` (no labels) from the /metrics of a central server's
// --http-addr `http` (HOST:PORT); -1 if it is not there.
inline double central_metric(const std::string& http, const std::string& name) {
  for (const auto& line : lines_of(http_request(http, "GET", "/metrics").body)) {
    if (line.starts_with(name + " ")) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

// The bearer token is the cookie file's text (64 hex digits and a newline),
// as a user reads it with cat.
inline std::string token_of(const Node& node) {
  std::string text = read_file(node.data_dir / "control.cookie");
  REQUIRE(text.size() == 65);
  REQUIRE(text.back() == '\n');
  text.pop_back();
  return text;
}

// The binary with these arguments, run in `dir` (30 s at most).
inline RunResult p2p(const std::vector<std::string>& args, const TempDir& dir) {
  std::vector<std::string> full{binary()};
  full.insert(full.end(), args.begin(), args.end());
  return run(full, dir.path(), std::chrono::seconds(30));
}

}  // namespace p2pshare::test
