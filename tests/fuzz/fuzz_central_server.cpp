// Fuzzes the real central server over a real loopback socket: accept,
// framing, Hello, and every request handler with the SQLite registry behind
// it. One server lives for the whole run (its registry fills up as inputs
// announce files, as a long-running tracker's would).
//
// Input: a sequence of operations. Each takes a selector byte that says
// which of two connections it goes to and whether it is raw bytes (framed
// correctly, body fuzzed), a raw header (the connection ends there), or a
// structured pb::CentralRequest built from the following bytes, so the
// handlers behind the parser are reached as often as the parser itself.
//
// Findings: a crash or sanitizer report in the server; a response that is
// not a well-formed frame holding a pb::CentralResponse; an "internal error"
// answer (a handler threw something other than p2pshare::Error); a
// connection that neither answers nor closes; and, after every input, a
// server that no longer answers a ListFiles on a fresh connection.
#include <fuzzer/FuzzedDataProvider.h>

#include <csignal>
#include <memory>
#include <string>
#include <vector>

#include "central.pb.h"
#include "fuzz_support.hpp"
#include "p2pshare/central_server.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/protocol.hpp"

namespace {

using namespace p2pshare;
using fuzz::Client;
using fuzz::Clock;
using Frame = wire::FrameDecoder::Frame;

constexpr std::uint64_t kSentinelId = 0x5e17'1e15'dead'beefull;
constexpr int kMaxOps = 24;
// Generous: a sanitized server on a busy 2-core machine is slow, but a
// server that has not answered in this long is stuck.
constexpr auto kAnswerDeadline = std::chrono::seconds(5);
constexpr auto kLivenessDeadline = std::chrono::seconds(2);

struct Env {
  fuzz::IoThread io;
  std::unique_ptr<central::CentralServer> server;
  std::filesystem::path dir;
  std::uint16_t port = 0;
  std::string seeded_id;  // a file the registry always knows
};
Env* g_env = nullptr;

std::string frame_list_files(std::uint64_t id, std::uint32_t limit) {
  pb::CentralRequest request;
  request.set_request_id(id);
  request.mutable_list_files()->set_limit(limit);
  return request.SerializeAsString();
}

// Checks one frame from the server; returns the parsed response.
pb::CentralResponse check_response(const Frame& frame) {
  if (!frame.payload.empty()) fuzz::finding("central server sent a payload");
  pb::CentralResponse response;
  if (!response.ParseFromString(frame.message)) fuzz::finding("central server sent an unparsable response");
  if (response.body_case() == pb::CentralResponse::BODY_NOT_SET) fuzz::finding("central server sent an empty response");
  if (response.has_error() && response.error().message() == "internal error") {
    fuzz::finding(
        "central server answered 'internal error': a handler threw something other than p2pshare::Error "
        "(its log line above says what)");
  }
  return response;
}

// Reads until the answer to `sentinel` (if any) or the server closes.
void drain(Client& client, std::optional<std::uint64_t> sentinel) {
  const auto deadline = Clock::now() + kAnswerDeadline;
  while (true) {
    Frame frame;
    switch (client.read_frame(frame, deadline)) {
      case Client::Read::frame: {
        const auto response = check_response(frame);
        fuzz::trace("  <- %s\n", response.ShortDebugString().substr(0, 200).c_str());
        if (sentinel && response.request_id() == *sentinel && response.has_file_list()) return;
        break;
      }
      case Client::Read::closed:
        return;
      case Client::Read::bad_frame:
        fuzz::finding("central server sent a bad frame: " + client.decode_error());
      case Client::Read::timeout:
        fuzz::finding("central server neither answered nor closed the connection in time");
    }
  }
}

void check_alive() {
  fuzz::trace("liveness check\n");
  Client client(protocol::kCentralLimits);
  if (!client.connect(g_env->port)) fuzz::finding("central server no longer accepts connections");
  client.send_frame(protocol::hello(pb::PLANE_CENTRAL));
  client.send_frame(frame_list_files(1, 1));
  const auto deadline = Clock::now() + kLivenessDeadline;
  while (true) {
    Frame frame;
    const auto result = client.read_frame(frame, deadline);
    if (result != Client::Read::frame)
      fuzz::finding("central server stopped answering (liveness check after this input)");
    const auto response = check_response(frame);
    if (response.request_id() == 1 && response.has_file_list()) return;
  }
}

// Turns fuzz bytes into protocol values: mostly well-formed (so a handler
// gets past its checks), sometimes anything at all.
struct Gen {
  FuzzedDataProvider& in;
  std::vector<std::string> ids;  // file ids this input can name

  std::string file_id() {
    switch (in.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
      case 1:
        return ids[in.ConsumeIntegralInRange<std::size_t>(0, ids.size() - 1)];
      case 2: {
        std::string id = in.ConsumeBytesAsString(32);
        id.resize(32, '\0');
        return id;
      }
      case 3:
        return {};
      default:
        return in.ConsumeRandomLengthString(40);
    }
  }

  // The key a connection presents (its peer id at Register): one of a few
  // fixed ones, so inputs register the same peers again and a second
  // connection can take a peer over from the first; or none (Register is
  // then refused).
  const p2pshare::tls::Identity* identity() {
    const auto pick = in.ConsumeIntegral<std::uint8_t>();
    return pick < 32 ? nullptr : &fuzz::fixed_identity(pick);
  }

  pb::Manifest manifest() {
    pb::Manifest m;
    const int shape = in.ConsumeIntegralInRange<int>(0, 3);
    if (shape == 0) {
      m.set_size(in.ConsumeIntegral<std::uint64_t>());
      m.set_chunk_size(in.ConsumeIntegral<std::uint32_t>());
      m.set_chunk_hashes(in.ConsumeRandomLengthString(256));
      m.set_name(in.ConsumeRandomLengthString(1100));
    } else {
      // Valid geometry: chunk size a power of two in range, the hash list
      // exactly as long as the size implies.
      const std::uint32_t chunk = 1u << in.ConsumeIntegralInRange<int>(14, 24);
      const auto count = in.ConsumeIntegralInRange<std::uint32_t>(0, shape == 3 ? 300 : 4);
      const std::uint64_t size =
          count == 0 ? 0 : std::uint64_t{count - 1} * chunk + in.ConsumeIntegralInRange<std::uint32_t>(1, chunk);
      std::string seed = in.ConsumeBytesAsString(8);
      seed.resize(8, '\0');
      std::string hashes(std::size_t{count} * 32, '\0');
      for (std::uint32_t i = 0; i < count; ++i) {
        hashes.replace(std::size_t{i} * 32, 8, seed);
        hashes[std::size_t{i} * 32 + 31] = static_cast<char>(i);
      }
      m.set_size(size);
      m.set_chunk_size(chunk);
      m.set_chunk_hashes(hashes);
      m.set_name(in.ConsumeRandomLengthString(300));
    }
    try {
      ids.push_back(to_bytes(manifest_from_wire(m).file_id()));
    } catch (const Error&) {
    }
    return m;
  }

  std::string bitfield(std::uint64_t count) {
    const std::size_t bytes = (count + 7) / 8;
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        return {};  // a complete holder
      case 1: {
        std::string bits = in.ConsumeBytesAsString(bytes);
        bits.resize(bytes, '\0');
        if (count % 8 != 0 && bytes > 0) bits.back() &= static_cast<char>(0xff << (8 - count % 8));
        return bits;
      }
      case 2: {
        std::string bits(bytes, '\xff');
        if (count % 8 != 0 && bytes > 0) bits.back() = static_cast<char>(0xff << (8 - count % 8));
        return bits;
      }
      default:
        return in.ConsumeRandomLengthString(64);
    }
  }

  pb::CentralRequest request() {
    pb::CentralRequest r;
    r.set_request_id(in.ConsumeIntegral<std::uint16_t>());
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0: {
        auto* reg = r.mutable_register_();
        reg->set_listen_port(in.ConsumeBool() ? in.ConsumeIntegralInRange<std::uint32_t>(1, 65535)
                                              : in.ConsumeIntegral<std::uint32_t>());
        break;
      }
      case 1: {
        auto* announce = r.mutable_announce();
        *announce->mutable_manifest() = manifest();
        const auto& m = announce->manifest();
        const std::uint64_t count =
            m.chunk_size() == 0 ? 0 : (m.size() / m.chunk_size() + (m.size() % m.chunk_size() != 0));
        announce->set_bitfield(bitfield(std::min<std::uint64_t>(count, 1u << 20)));
        break;
      }
      case 2:
        r.mutable_withdraw()->set_file_id(file_id());
        break;
      case 3:
        r.mutable_heartbeat();
        break;
      case 4: {
        auto* list = r.mutable_list_files();
        if (in.ConsumeBool()) list->set_after_file_id(file_id());
        list->set_limit(in.ConsumeIntegral<std::uint32_t>());
        break;
      }
      case 5:
        r.mutable_list_peers()->set_file_id(file_id());
        break;
      case 6:
        r.mutable_get_file()->set_file_id(file_id());
        break;
      default:
        break;  // no body: "unknown request"
    }
    return r;
  }

  // Mostly the right Hello; sometimes a fuzzed one (wrong magic, version,
  // plane) or raw bytes, to reach the hello checks.
  std::string hello() {
    const auto kind = in.ConsumeIntegral<std::uint8_t>();
    if (kind >= 16) return protocol::hello(pb::PLANE_CENTRAL);
    if (kind < 4) return in.ConsumeRandomLengthString(64);
    pb::Hello h;
    h.set_magic(in.ConsumeBool() ? std::string(protocol::kMagic) : in.ConsumeRandomLengthString(16));
    h.set_version(in.ConsumeBool() ? protocol::kVersion : in.ConsumeIntegral<std::uint32_t>());
    h.set_plane(static_cast<pb::Plane>(in.ConsumeIntegralInRange<int>(0, 4)));
    h.set_peer_id(in.ConsumeRandomLengthString(20));
    h.set_cookie(in.ConsumeRandomLengthString(70));
    return h.SerializeAsString();
  }
};

void seed_registry(Env& env) {
  // One peer and one file known before any input, so GetFile, ListPeers and
  // Withdraw have something real to find.
  Client client(protocol::kCentralLimits);
  if (!client.connect(env.port)) fuzz::finding("cannot reach the central server at start");
  client.present(&fuzz::fixed_identity(0));
  client.send_frame(protocol::hello(pb::PLANE_CENTRAL));
  pb::CentralRequest reg;
  reg.set_request_id(1);
  reg.mutable_register_()->set_listen_port(4000);
  client.send_frame(reg.SerializeAsString());
  pb::Manifest m;
  m.set_size(40000);
  m.set_chunk_size(16384);
  m.set_chunk_hashes(std::string(3 * 32, '\x11'));
  m.set_name("seeded.bin");
  env.seeded_id = to_bytes(manifest_from_wire(m).file_id());
  pb::CentralRequest announce;
  announce.set_request_id(2);
  *announce.mutable_announce()->mutable_manifest() = m;
  client.send_frame(announce.SerializeAsString());
  client.send_frame(frame_list_files(kSentinelId, 1));
  drain(client, kSentinelId);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::signal(SIGPIPE, SIG_IGN);
  fuzz::quiet_logs();
  g_env = new Env;  // never freed: the io thread may still hold it at exit
  g_env->dir = fuzz::make_temp_dir("p2pshare-fuzz-central");
  central::ServerConfig config;
  config.listen = cli::Address{"127.0.0.1", 0};
  config.data_dir = g_env->dir;
  // Short, so peers expire and the registry flushes while inputs run.
  config.heartbeat_interval = std::chrono::milliseconds(1000);
  g_env->server = std::make_unique<central::CentralServer>(g_env->io.io(), config);
  g_env->port = g_env->server->start().port;
  g_env->io.start();
  seed_registry(*g_env);
  std::atexit([] {
    // Stop serving before static destructors run under the io thread's feet.
    g_env->server->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    g_env->io.stop();
    std::error_code ignored;
    std::filesystem::remove_all(g_env->dir, ignored);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Gen gen{in, {g_env->seeded_id}};
  std::array<std::unique_ptr<Client>, 2> conns;
  std::array<bool, 2> ended{false, false};  // a raw header was sent: nothing more fits

  auto open = [&](std::size_t i) -> Client* {
    if (!conns[i]) {
      conns[i] = std::make_unique<Client>(protocol::kCentralLimits);
      if (!conns[i]->connect(g_env->port)) fuzz::finding("central server refused a connection");
      conns[i]->present(gen.identity());
      const std::string hello = gen.hello();
      fuzz::trace("conn %zu: hello%s\n", i, hello == protocol::hello(pb::PLANE_CENTRAL) ? "" : " (fuzzed)");
      conns[i]->send_frame(hello);
    }
    return conns[i].get();
  };

  open(0);
  for (int op = 0; op < kMaxOps && in.remaining_bytes() > 0; ++op) {
    const auto selector = in.ConsumeIntegral<std::uint8_t>();
    const std::size_t which = selector & 1;
    if (ended[which]) continue;
    Client* client = open(which);
    const unsigned kind = selector >> 1;
    if (kind < 60) {
      // Raw: a well-framed message with fuzzed bytes for the parser.
      const std::string body = in.ConsumeRandomLengthString(2048);
      fuzz::trace("conn %zu: raw %zu bytes\n", which, body.size());
      client->send_frame(body);
    } else if (kind < 64) {
      // A raw header and whatever follows: the length checks and a frame
      // cut short. The server can only wait for the rest, so end here.
      const std::string bytes = in.ConsumeBytesAsString(8) + in.ConsumeRandomLengthString(64);
      fuzz::trace("conn %zu: raw header + %zu bytes, then EOF\n", which, bytes.size());
      client->send_raw(bytes);
      client->finish_sending();
      ended[which] = true;
    } else {
      const auto request = gen.request();
      fuzz::trace("conn %zu: %s\n", which, request.ShortDebugString().c_str());
      client->send_frame(request.SerializeAsString());
    }
  }

  for (std::size_t i = 0; i < conns.size(); ++i) {
    if (!conns[i]) continue;
    if (ended[i]) {
      drain(*conns[i], std::nullopt);
    } else {
      // Requests are answered in order: once this one is, every earlier one was.
      conns[i]->send_frame(frame_list_files(kSentinelId, 1));
      drain(*conns[i], kSentinelId);
    }
    conns[i]->close();
  }
  check_alive();
  return 0;
}
