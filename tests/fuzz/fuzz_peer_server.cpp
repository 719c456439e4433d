// Fuzzes the real peer-server's peer plane (what any stranger on the network
// can reach) over loopback: Hello, Interested, and the chunk exchange for a
// real shared file. In-process, one io_context thread runs a central server
// and a peer-server registered with it; at start the file is registered
// through the control plane exactly as `p2pshare register-file` does.
//
// Input: a Hello choice, then operations, each with a selector byte: which
// of two connections, and raw (a well-framed message with fuzzed bytes,
// sometimes with a payload), a raw header (the connection ends there), or a
// structured pb::PeerMessage (Interested for the real file id, Request with
// a fuzzed index, Have, Cancel, Piece with a payload, Reject, Bitfield, ...).
//
// Findings: a crash or sanitizer report; a frame from the server that is
// malformed; a Piece whose bytes are not the file's bytes at that chunk; a
// seeder that requests chunks; a connection that never closes after a
// protocol error; and, after every input, a server that no longer answers a
// fresh Interested with the right Bitfield.
#include <fuzzer/FuzzedDataProvider.h>

#include <fcntl.h>

#include <csignal>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "control.pb.h"
#include "fuzz_support.hpp"
#include "p2pshare/central_server.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/peer_server.hpp"
#include "p2pshare/protocol.hpp"
#include "peer.pb.h"

namespace {

using namespace p2pshare;
using fuzz::Client;
using fuzz::Clock;
using Frame = wire::FrameDecoder::Frame;

constexpr int kMaxOps = 24;
constexpr auto kAnswerDeadline = std::chrono::seconds(5);
constexpr auto kLivenessDeadline = std::chrono::seconds(2);
// Two whole chunks at the default chunk size and a short last one: the last
// chunk's length and the bitfield's spare bits both matter.
constexpr std::size_t kFileSize = 2 * kDefaultChunkSize + 1000;

struct Env {
  fuzz::IoThread io;
  std::unique_ptr<central::CentralServer> central;
  std::unique_ptr<peer::PeerServer> peer;
  std::filesystem::path dir;
  std::uint16_t peer_port = 0;
  std::string file_id;   // raw 32 bytes
  std::string contents;  // the shared file's bytes
  std::uint32_t chunk_size = 0;
  std::uint32_t chunks = 0;
  std::string full_bitfield;

  std::uint32_t chunk_length(std::uint32_t index) const {
    const std::uint64_t offset = std::uint64_t{index} * chunk_size;
    if (offset >= contents.size()) return 0;
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(chunk_size, contents.size() - offset));
  }
};
Env* g_env = nullptr;

// Peer ids the inputs use: those of a few fixed keys (so two connections can
// collide), never the liveness check's (fixed key 3). The peer plane is mutual
// TLS: a connection presents the key whose id its Hello claims.
const p2pshare::tls::Identity& input_identity(unsigned i) {
  return fuzz::fixed_identity(i % 3);
}
const p2pshare::tls::Identity& liveness_identity() {
  return fuzz::fixed_identity(3);
}

std::string encode(const pb::PeerMessage& message) {
  return message.SerializeAsString();
}

pb::PeerMessage interested(const std::string& id, const std::string& bits) {
  pb::PeerMessage m;
  m.mutable_interested()->set_file_id(id);
  m.mutable_interested()->set_bitfield(bits);
  return m;
}

// A message the server must close on in every stage after Hello ("expected
// interested" before, "unexpected message" after): once it has, every
// earlier frame was handled.
std::string closing_message() {
  pb::PeerMessage m;
  m.mutable_bitfield()->set_bits("x");
  return encode(m);
}

// Checks one frame from the server. The first may be the Welcome.
void check_frame(const Frame& frame, bool first) {
  if (first) {
    pb::Welcome welcome;
    if (frame.payload.empty() && welcome.ParseFromString(frame.message) && welcome.version() == protocol::kVersion &&
        welcome.peer_id().size() == PeerId::kSize) {
      return;
    }
  }
  pb::PeerMessage m;
  if (!m.ParseFromString(frame.message)) fuzz::finding("peer-server sent an unparsable message");
  if (m.body_case() == pb::PeerMessage::BODY_NOT_SET) fuzz::finding("peer-server sent an empty message");
  if (!m.has_piece() && !frame.payload.empty()) fuzz::finding("peer-server sent a payload on a non-piece message");
  switch (m.body_case()) {
    case pb::PeerMessage::kPiece: {
      const std::uint32_t index = m.piece().index();
      if (index >= g_env->chunks) fuzz::finding("peer-server sent a piece out of range");
      if (frame.payload.size() != g_env->chunk_length(index))
        fuzz::finding("peer-server sent a piece of the wrong length");
      if (g_env->contents.compare(std::size_t{index} * g_env->chunk_size, frame.payload.size(), frame.payload) != 0) {
        fuzz::finding("peer-server sent a piece whose bytes are not the file's");
      }
      break;
    }
    case pb::PeerMessage::kBitfield:
      if (m.bitfield().bits() != g_env->full_bitfield)
        fuzz::finding("a complete seeder sent a bitfield that is not full");
      break;
    case pb::PeerMessage::kRequest:
    case pb::PeerMessage::kInterested:
      fuzz::finding("a complete seeder sent a request or interested");
    default:
      break;
  }
}

// Reads everything until the server closes the connection. `strict`: we
// sent a good peer Hello, so every frame must be peer-plane (after a fuzzed
// Hello naming another plane, a control-plane refusal is fine).
void drain(Client& client, bool strict) {
  const auto deadline = Clock::now() + kAnswerDeadline;
  for (bool first = true;; first = false) {
    Frame frame;
    switch (client.read_frame(frame, deadline)) {
      case Client::Read::frame:
        if (strict) check_frame(frame, first);
        if (fuzz::tracing()) {
          pb::Welcome welcome;
          pb::PeerMessage parsed;
          if (first && welcome.ParseFromString(frame.message) && welcome.version() == protocol::kVersion) {
            fuzz::trace("  <- welcome\n");
          } else {
            parsed.ParseFromString(frame.message);
            fuzz::trace("  <- %s + %zu payload\n", parsed.ShortDebugString().substr(0, 200).c_str(),
                        frame.payload.size());
          }
        }
        break;
      case Client::Read::closed:
        return;
      case Client::Read::bad_frame:
        fuzz::finding("peer-server sent a bad frame: " + client.decode_error());
      case Client::Read::timeout:
        fuzz::finding("peer-server did not close the connection after a protocol error");
    }
  }
}

void check_alive() {
  fuzz::trace("liveness check\n");
  Client client(protocol::kPeerLimits);
  if (!client.connect(g_env->peer_port)) fuzz::finding("peer-server no longer accepts connections");
  client.present(&liveness_identity());
  client.send_frame(protocol::hello(pb::PLANE_PEER, to_bytes(liveness_identity().peer_id())));
  client.send_frame(encode(interested(g_env->file_id, "")));
  const auto deadline = Clock::now() + kLivenessDeadline;
  Frame frame;
  if (client.read_frame(frame, deadline) != Client::Read::frame)
    fuzz::finding("peer-server sent no Welcome (liveness check)");
  pb::Welcome welcome;
  if (!welcome.ParseFromString(frame.message)) fuzz::finding("peer-server's Welcome is malformed (liveness check)");
  if (client.read_frame(frame, deadline) != Client::Read::frame) {
    fuzz::finding("peer-server did not answer Interested for its own file (liveness check)");
  }
  pb::PeerMessage answer;
  if (!answer.ParseFromString(frame.message) || !answer.has_bitfield() ||
      answer.bitfield().bits() != g_env->full_bitfield) {
    fuzz::finding("peer-server answered Interested for its own file without its full Bitfield (liveness check)");
  }
  // Wait for the close, so the link is gone before the next check reuses its peer id.
  client.send_frame(closing_message());
  drain(client, true);
}

struct Gen {
  FuzzedDataProvider& in;

  std::string file_id() {
    switch (in.ConsumeIntegralInRange<int>(0, 4)) {
      case 0:
      case 1:
      case 2:
        return g_env->file_id;
      case 3: {
        std::string id = in.ConsumeBytesAsString(32);
        id.resize(32, '\0');
        return id;
      }
      default:
        return in.ConsumeRandomLengthString(40);
    }
  }

  std::string bitfield() {
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0:
        return {};
      case 1: {
        // The right length for the file, spare bits clear.
        const std::size_t bytes = (g_env->chunks + 7) / 8;
        std::string bits = in.ConsumeBytesAsString(bytes);
        bits.resize(bytes, '\0');
        if (g_env->chunks % 8 != 0) bits.back() &= static_cast<char>(0xff << (8 - g_env->chunks % 8));
        return bits;
      }
      case 2:
        return g_env->full_bitfield;
      default:
        return in.ConsumeRandomLengthString(16);
    }
  }

  std::uint32_t index() {
    // Mostly in range or just past it, where the off-by-ones live.
    if (in.ConsumeIntegralInRange<int>(0, 3) != 0) return in.ConsumeIntegralInRange<std::uint32_t>(0, g_env->chunks);
    return in.ConsumeIntegral<std::uint32_t>();
  }

  // Presents a fixed key and mostly claims its id; sometimes another's or
  // anything (refused: the id must be the certificate's).
  std::string peer_id(Client& client) {
    const auto& key = input_identity(in.ConsumeIntegral<std::uint8_t>());
    client.present(&key);
    switch (in.ConsumeIntegralInRange<int>(0, 7)) {
      case 0:
        return in.ConsumeRandomLengthString(20);
      case 1:
        return to_bytes(input_identity(in.ConsumeIntegral<std::uint8_t>()).peer_id());
      default:
        return to_bytes(key.peer_id());
    }
  }

  // A message and the payload that travels with it.
  std::pair<std::string, std::string> message() {
    pb::PeerMessage m;
    std::string payload;
    switch (in.ConsumeIntegralInRange<int>(0, 9)) {
      case 0: {
        // Sequenced: argument evaluation order is unspecified, and the seeds
        // depend on the order bytes are taken.
        const std::string id = file_id();
        m = interested(id, bitfield());
        break;
      }
      case 1:
        m.mutable_bitfield()->set_bits(bitfield());
        break;
      case 2:
        m.mutable_have()->set_index(index());
        break;
      case 3:
        m.mutable_request()->set_index(index());
        break;
      case 4:
        m.mutable_cancel()->set_index(index());
        break;
      case 5: {
        const std::uint32_t i = index();
        m.mutable_piece()->set_index(i);
        // The exact length (short only for the last chunk) or anything small.
        const std::uint32_t exact = g_env->chunk_length(i);
        payload = in.ConsumeBool() && exact <= 4096 ? std::string(exact, '\x5a') : in.ConsumeRandomLengthString(300);
        break;
      }
      case 6:
        m.mutable_reject()->set_index(index());
        break;
      case 7:
        m.mutable_keep_alive();
        break;
      case 8:
        m.mutable_error()->set_code(static_cast<pb::ErrorCode>(in.ConsumeIntegralInRange<int>(0, 9)));
        m.mutable_error()->set_message(in.ConsumeRandomLengthString(64));
        break;
      default:
        break;  // no body
    }
    // Now and then a payload where none belongs.
    if (payload.empty() && in.ConsumeIntegralInRange<int>(0, 15) == 0) payload = in.ConsumeRandomLengthString(64);
    return {encode(m), payload};
  }

  // The first frame. Mostly a good peer Hello, often followed by a good
  // Interested so the input starts in the active stage. True if the Hello
  // was a good peer Hello.
  bool start(Client& client) {
    const auto kind = in.ConsumeIntegral<std::uint8_t>();
    if (kind < 4) {
      client.send_frame(in.ConsumeRandomLengthString(64));
      return false;
    }
    if (kind < 16) {
      pb::Hello h;
      h.set_magic(in.ConsumeBool() ? std::string(protocol::kMagic) : in.ConsumeRandomLengthString(16));
      h.set_version(in.ConsumeBool() ? protocol::kVersion : in.ConsumeIntegral<std::uint32_t>());
      h.set_plane(static_cast<pb::Plane>(in.ConsumeIntegralInRange<int>(0, 4)));
      h.set_peer_id(in.ConsumeRandomLengthString(20));
      h.set_cookie(in.ConsumeRandomLengthString(70));
      client.send_frame(h.SerializeAsString());
      return false;
    }
    client.send_frame(protocol::hello(pb::PLANE_PEER, peer_id(client)));
    if (kind >= 128) client.send_frame(encode(interested(g_env->file_id, bitfield())));
    return true;
  }
};

// Control plane, as `p2pshare register-file` speaks it: Hello with the
// cookie (the 64 hex digits of the cookie file), then RegisterFile.
void register_file(Env& env, const std::filesystem::path& data_dir, const std::filesystem::path& file) {
  std::ifstream cookie_file(peer::cookie_path(data_dir), std::ios::binary);
  const std::string cookie((std::istreambuf_iterator<char>(cookie_file)), std::istreambuf_iterator<char>());
  const auto hex = peer::cookie_hex_of(cookie);
  if (!hex || cookie.size() != 65) fuzz::finding("peer-server wrote no control cookie of 64 hex digits");
  Client client(protocol::kControlLimits);
  if (!client.connect(env.peer_port)) fuzz::finding("cannot reach the peer-server's control plane");
  client.send_frame(protocol::hello(pb::PLANE_CONTROL, {}, *hex));
  pb::ControlRequest request;
  request.mutable_register_file()->set_path(file.string());
  client.send_frame(request.SerializeAsString());
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (true) {
    Frame frame;
    if (client.read_frame(frame, deadline) != Client::Read::frame)
      fuzz::finding("register-file got no answer at start");
    pb::ControlResponse response;
    if (!response.ParseFromString(frame.message)) fuzz::finding("malformed control response at start");
    if (response.has_error()) fuzz::finding("register-file failed at start: " + response.error().message());
    if (!response.has_registered()) continue;  // the Done that accepts the Hello
    env.file_id = response.registered().file_id();
    env.chunk_size = response.registered().chunk_size();
    env.chunks = response.registered().chunks();
    break;
  }
  FUZZ_CHECK(env.file_id.size() == 32 && env.chunks > 0 && env.chunks < 64);
  env.full_bitfield.assign((env.chunks + 7) / 8, '\xff');
  if (env.chunks % 8 != 0) env.full_bitfield.back() = static_cast<char>(0xff << (8 - env.chunks % 8));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::signal(SIGPIPE, SIG_IGN);
  fuzz::quiet_logs();
  g_env = new Env;  // never freed: the io and disk threads may still hold it at exit
  Env& env = *g_env;
  env.dir = fuzz::make_temp_dir("p2pshare-fuzz-peer");
  const auto file = env.dir / "shared.bin";
  env.contents.resize(kFileSize);
  for (std::size_t i = 0; i < kFileSize; ++i) env.contents[i] = static_cast<char>((i * 2654435761u) >> 13);
  std::ofstream(file, std::ios::binary).write(env.contents.data(), static_cast<std::streamsize>(env.contents.size()));

  central::ServerConfig central_config;
  central_config.listen = cli::Address{"127.0.0.1", 0};
  central_config.data_dir = env.dir / "central";
  std::filesystem::create_directories(central_config.data_dir);
  env.central = std::make_unique<central::CentralServer>(env.io.io(), central_config);
  const auto central_addr = env.central->start();

  peer::PeerConfig peer_config;
  peer_config.listen = cli::Address{"127.0.0.1", 0};
  peer_config.centrals = {central_addr};
  peer_config.data_dir = env.dir / "peer";
  peer_config.download_dir = env.dir / "downloads";
  peer_config.disk_threads = 2;
  // The product's default cap stays, so a server that stops accepting is
  // found. P2PSHARE_FUZZ_MAX_CONNECTIONS raises it, to fuzz on past a known
  // leak of connection slots.
  if (const char* cap = std::getenv("P2PSHARE_FUZZ_MAX_CONNECTIONS")) {
    peer_config.max_connections = std::strtoull(cap, nullptr, 10);
  }
  std::filesystem::create_directories(peer_config.download_dir);
  env.peer = std::make_unique<peer::PeerServer>(env.io.io(), peer_config);
  env.peer_port = env.peer->start().port;
  env.io.start();
  register_file(env, peer_config.data_dir, file);
  std::atexit([] {
    g_env->peer->stop();
    g_env->central->stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    g_env->io.stop();
    std::error_code ignored;
    std::filesystem::remove_all(g_env->dir, ignored);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Gen gen{in};
  std::array<std::unique_ptr<Client>, 2> conns;
  std::array<bool, 2> ended{false, false};
  std::array<bool, 2> strict{false, false};

  auto open = [&](std::size_t i) -> Client* {
    if (!conns[i]) {
      conns[i] = std::make_unique<Client>(protocol::kPeerLimits);
      if (!conns[i]->connect(g_env->peer_port)) fuzz::finding("peer-server refused a connection");
      strict[i] = gen.start(*conns[i]);
      fuzz::trace("conn %zu: %s\n", i, strict[i] ? "peer hello" : "fuzzed hello");
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
    if (kind < 56) {
      // Raw: a well-framed message with fuzzed bytes, sometimes a payload.
      const std::string message = in.ConsumeRandomLengthString(1024);
      const std::string payload = kind < 8 ? in.ConsumeRandomLengthString(300) : std::string();
      fuzz::trace("conn %zu: raw %zu bytes + %zu payload\n", which, message.size(), payload.size());
      client->send_frame(message, payload);
    } else if (kind < 64) {
      // A raw header and whatever follows; the connection ends there.
      const std::string bytes = in.ConsumeBytesAsString(8) + in.ConsumeRandomLengthString(64);
      fuzz::trace("conn %zu: raw header + %zu bytes, then EOF\n", which, bytes.size());
      client->send_raw(bytes);
      client->finish_sending();
      ended[which] = true;
    } else {
      const auto [message, payload] = gen.message();
      if (fuzz::tracing()) {
        pb::PeerMessage parsed;
        parsed.ParseFromString(message);
        fuzz::trace("conn %zu: %s + %zu payload\n", which, parsed.ShortDebugString().c_str(), payload.size());
      }
      client->send_frame(message, payload);
    }
  }

  for (std::size_t i = 0; i < conns.size(); ++i) {
    if (!conns[i]) continue;
    // No half-close here: the server closes first, and our RST then leaves
    // no TIME_WAIT on either side.
    if (!ended[i]) conns[i]->send_frame(closing_message());
    drain(*conns[i], strict[i]);
    conns[i]->close();
  }
  check_alive();
  return 0;
}
