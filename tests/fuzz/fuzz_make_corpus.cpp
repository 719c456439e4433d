// Writes the seed corpora under <dir>/<target>/. Run once by hand and
// commit the output (the seeds are serialized protobufs, and python3 here
// has no protobuf module):
//   build/fuzz/tests/fuzz/fuzz_make_corpus tests/fuzz/corpus
//
// The server targets read their input through FuzzedDataProvider, which
// takes integers from the end of the input and bytes from the front.
// FdpWriter produces such inputs: each call below mirrors, in order, one
// call the target's generator makes (see Gen in fuzz_central_server.cpp and
// fuzz_peer_server.cpp). A seed that drifts out of step with the targets
// still works as a seed, just a less deliberate one; run a target with
// P2PSHARE_FUZZ_TRACE=1 on a seed to see what it sends.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "central.pb.h"
#include "common.pb.h"
#include "p2pshare/handoff.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/protocol.hpp"
#include "p2pshare/wire.hpp"
#include "peer.pb.h"

namespace {

using namespace p2pshare;
namespace fs = std::filesystem;

class FdpWriter {
 public:
  template <typename T>
  FdpWriter& in_range(T value, T min, T max) {
    const std::uint64_t range = static_cast<std::uint64_t>(max) - static_cast<std::uint64_t>(min);
    const std::uint64_t v = static_cast<std::uint64_t>(value) - static_cast<std::uint64_t>(min);
    int n = 0;
    for (std::size_t offset = 0; offset < sizeof(T) * 8 && (range >> offset) > 0; offset += 8) ++n;
    for (int i = n - 1; i >= 0; --i) back_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  template <typename T>
  FdpWriter& integral(T value) {
    return in_range<T>(value, std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  }
  FdpWriter& boolean(bool value) { return integral<std::uint8_t>(value ? 1 : 0); }
  FdpWriter& bytes(const std::string& s) {
    front_ += s;
    return *this;
  }
  FdpWriter& random_string(const std::string& s) {
    for (const char c : s) front_ += c == '\\' ? std::string("\\\\") : std::string(1, c);
    front_ += "\\E";  // a backslash and anything else ends the string
    return *this;
  }
  std::string data() const { return front_ + std::string(back_.rbegin(), back_.rend()); }

 private:
  std::string front_;
  std::string back_;  // in the order it is consumed
};

std::string frame(const std::string& message, const std::string& payload = {}) {
  const auto header =
      wire::encode_header({static_cast<std::uint32_t>(message.size()), static_cast<std::uint32_t>(payload.size())});
  return std::string(reinterpret_cast<const char*>(header.data()), header.size()) + message + payload;
}

std::string be32(std::uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
}

fs::path g_root;
int g_count = 0;

void write(const std::string& target, const std::string& name, const std::string& data) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  ++g_count;
}

pb::Manifest small_manifest(std::uint64_t size, std::uint32_t chunk_size, const std::string& name, char fill) {
  pb::Manifest m;
  m.set_size(size);
  m.set_chunk_size(chunk_size);
  m.set_chunk_hashes(std::string(chunk_count_for(size, chunk_size) * 32, fill));
  m.set_name(name);
  return m;
}

// --- fuzz_frame_decoder: mode byte, then (piece length, piece bytes)... ----
void frame_decoder() {
  auto stream = [](std::uint8_t mode, const std::string& bytes, std::size_t piece) {
    FdpWriter w;
    w.integral<std::uint8_t>(mode);
    for (std::size_t at = 0; at < bytes.size(); at += piece) {
      const std::string part = bytes.substr(at, piece);
      w.in_range<std::size_t>(part.size(), 0, 64).bytes(part);
    }
    return w.data();
  };
  pb::PeerMessage piece;
  piece.mutable_piece()->set_index(2);
  const std::string peer = frame(protocol::hello(pb::PLANE_PEER, std::string(16, '\x01'))) +
                           frame(piece.SerializeAsString(), std::string(40, '\xab'));
  write("fuzz_frame_decoder", "peer_hello_piece", stream(0, peer, 7));
  write("fuzz_frame_decoder", "peer_lazy", stream(0x80, peer, 64));
  pb::CentralRequest list;
  list.set_request_id(7);
  list.mutable_list_files()->set_limit(10);
  write("fuzz_frame_decoder", "central_two_frames",
        stream(1, frame(protocol::hello(pb::PLANE_CENTRAL)) + frame(list.SerializeAsString()), 3));
  // Limits {16, 8}: one frame in, one over the message limit.
  write("fuzz_frame_decoder", "small_limits", stream(4, frame("0123456789", "abc") + frame(std::string(17, 'x')), 5));
  write("fuzz_frame_decoder", "empty_message", stream(3, frame(""), 8));
}

// --- fuzz_manifest: be32 bit count | serialized pb::Manifest ---------------
void manifest() {
  auto seed = [](const char* name, std::uint32_t bits, const pb::Manifest& m) {
    write("fuzz_manifest", name, be32(bits) + m.SerializeAsString());
  };
  // The name doubles as a bitfield for the manifest's chunk count; it must
  // stay valid UTF-8 (a proto3 string), so chunk 0 is never set.
  seed("three_chunks", 3, small_manifest(40000, 16384, "`", '\x11'));  // 0x60: chunks 1, 2
  seed("exact_chunks", 2, small_manifest(32768, 16384, "@", '\x22'));  // 0x40: chunk 1
  seed("empty_file", 0, small_manifest(0, kDefaultChunkSize, "empty", 0));
  seed("big_chunk", 1, small_manifest(kMaxChunkSize, kMaxChunkSize, "big.iso", '\x33'));
  seed("bad_chunk_size", 3, small_manifest(40000, 20000, "odd", '\x44'));
  write("fuzz_manifest", "bitfield_only", be32(10) + std::string("\xff\xc0", 2));
}

// --- fuzz_sanitize_name: the raw name --------------------------------------
void sanitize_name() {
  const std::vector<std::pair<const char*, std::string>> names = {
      {"plain", "report.pdf"},
      {"traversal", "../../etc/passwd"},
      {"backslashes", "..\\..\\windows\\system32"},
      {"dotfile", ".bashrc"},
      {"dots_spaces", " . .. "},
      {"control", std::string("a\0b\x01\x1f\x7f c.txt", 12)},
      {"long_utf8", std::string(200, 'x') +
                        [] {
                          std::string s;
                          for (int i = 0; i < 40; ++i) s += "\xc3\xa9";  // é
                          return s;
                        }()},
      {"long_4byte",
       [] {
         std::string s;
         for (int i = 0; i < 70; ++i) s += "\xf0\x9f\x98\x80";  // U+1F600
         return s;
       }()},
  };
  for (const auto& [file, name] : names) write("fuzz_sanitize_name", file, name);
}

// --- fuzz_central_server ------------------------------------------------------
// Mirrors Gen in fuzz_central_server.cpp.
constexpr std::uint8_t kGoodHello = 200;
// The key a connection presents, picked as it opens (before its Hello): fixed
// key 1 (Gen::identity: below 32 = none).
constexpr std::uint8_t kFixedKey = 33;
constexpr std::uint8_t kRaw0 = 0x10;         // raw bytes on connection 0
constexpr std::uint8_t kStructured0 = 0x80;  // structured request on connection 0
constexpr std::uint8_t kStructured1 = 0x81;  // ... on connection 1

void central() {
  const pb::Manifest m = small_manifest(40000, 16384, "report.pdf", '\x55');
  const std::string id = to_bytes(manifest_from_wire(m).file_id());

  // Raw: valid serialized requests, one per op.
  {
    std::vector<pb::CentralRequest> requests(7);
    requests[0].mutable_register_()->set_listen_port(5000);
    *requests[1].mutable_announce()->mutable_manifest() = m;
    requests[1].mutable_announce()->set_bitfield(std::string(1, '\xa0'));
    requests[2].mutable_list_files()->set_limit(5);
    requests[3].mutable_get_file()->set_file_id(id);
    requests[4].mutable_list_peers()->set_file_id(id);
    requests[5].mutable_heartbeat();
    requests[6].mutable_withdraw()->set_file_id(id);
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      requests[i].set_request_id(i + 1);
      w.integral<std::uint8_t>(kRaw0).random_string(requests[i].SerializeAsString());
    }
    write("fuzz_central_server", "raw_register_announce_query", w.data());
  }
  // Raw: unregistered announce, then a malformed request.
  {
    pb::CentralRequest announce;
    announce.set_request_id(1);
    *announce.mutable_announce()->mutable_manifest() = m;
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);
    w.integral<std::uint8_t>(kRaw0).random_string(announce.SerializeAsString());
    w.integral<std::uint8_t>(kRaw0).random_string("\x0a\xff\xff");
    write("fuzz_central_server", "raw_unregistered_then_garbage", w.data());
  }
  // Structured: register (as the connection's key), announce a valid 2-chunk partial
  // file, get it, list its peers, withdraw it, list all.
  {
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);
    // register
    w.integral<std::uint8_t>(kStructured0).integral<std::uint16_t>(1).in_range<int>(0, 0, 7);
    w.boolean(true).in_range<std::uint32_t>(6000, 1, 65535);  // listen port
    // announce
    w.integral<std::uint8_t>(kStructured0).integral<std::uint16_t>(2).in_range<int>(1, 0, 7);
    w.in_range<int>(1, 0, 3).in_range<int>(14, 14, 24).in_range<std::uint32_t>(2, 0, 4);
    w.in_range<std::uint32_t>(100, 1, 16384).bytes("seedseed").random_string("notes.txt");
    w.in_range<int>(1, 0, 3).bytes(std::string(1, '\x80'));  // have chunk 0 of 2
    // get_file, list_peers, withdraw: the id just announced (ids[1])
    for (int body : {6, 5, 2}) {
      w.integral<std::uint8_t>(kStructured0).integral<std::uint16_t>(3).in_range<int>(body, 0, 7);
      w.in_range<int>(1, 0, 4).in_range<std::size_t>(1, 0, 1);
    }
    // list_files after the seeded id, limit 3
    w.integral<std::uint8_t>(kStructured0).integral<std::uint16_t>(4).in_range<int>(4, 0, 7);
    w.boolean(true).in_range<int>(0, 0, 4).in_range<std::size_t>(0, 0, 1).integral<std::uint32_t>(3);
    write("fuzz_central_server", "structured_peer_lifecycle", w.data());
  }
  // Two connections registering the same key: the second takes over.
  {
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);
    for (std::uint8_t selector : {kStructured0, kStructured1}) {
      w.integral<std::uint8_t>(selector);
      if (selector == kStructured1) {
        w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);  // opening connection 1
      }
      w.integral<std::uint16_t>(9).in_range<int>(0, 0, 7);
      w.boolean(true).in_range<std::uint32_t>(7000, 1, 65535);
    }
    w.integral<std::uint8_t>(kStructured0).integral<std::uint16_t>(10).in_range<int>(3, 0, 7);  // heartbeat
    write("fuzz_central_server", "takeover", w.data());
  }
  // A Hello for the wrong plane.
  {
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(8);  // a fuzzed pb::Hello
    w.boolean(true).boolean(true).in_range<int>(pb::PLANE_PEER, 0, 4);
    w.random_string(std::string(16, 'p')).random_string("");
    w.integral<std::uint8_t>(kRaw0).random_string("x");
    write("fuzz_central_server", "wrong_plane", w.data());
  }
  // A raw header claiming a large message, then the connection ends.
  {
    FdpWriter w;
    w.integral<std::uint8_t>(kFixedKey).integral<std::uint8_t>(kGoodHello);
    w.integral<std::uint8_t>(122).bytes(be32(1 << 20) + be32(0)).random_string("partial");
    write("fuzz_central_server", "raw_header_cut_short", w.data());
  }
}

// --- fuzz_peer_server ---------------------------------------------------------
// Mirrors Gen in fuzz_peer_server.cpp, for its 3-chunk shared file.
constexpr std::uint32_t kChunks = 3;

// Good Hello with fixed peer id `who`, then (if `interested`) Interested
// for the real file with an empty bitfield.
void peer_start(FdpWriter& w, std::uint8_t who, bool interested) {
  w.integral<std::uint8_t>(interested ? 200 : 100);
  w.integral<std::uint8_t>(who).in_range<int>(2, 0, 7);  // fixed key `who`, claiming its own id
  if (interested) w.in_range<int>(0, 0, 3);
}

void peer_index_message(FdpWriter& w, std::uint8_t selector, int body, std::uint32_t index) {
  w.integral<std::uint8_t>(selector).in_range<int>(body, 0, 9);
  w.in_range<int>(1, 0, 3).in_range<std::uint32_t>(index, 0, kChunks);
  w.in_range<int>(1, 0, 15);  // no stray payload
}

void peer(const std::string& file_id) {
  // Request every chunk, Have, Cancel, and a Reject for something never asked.
  {
    FdpWriter w;
    peer_start(w, 0, true);
    for (std::uint32_t i = 0; i < kChunks; ++i) peer_index_message(w, 0x80, 3, i);
    peer_index_message(w, 0x80, 2, 1);  // have
    peer_index_message(w, 0x80, 4, 2);  // cancel
    peer_index_message(w, 0x80, 6, 0);  // reject
    write("fuzz_peer_server", "request_all_chunks", w.data());
  }
  // A Piece of exactly the last chunk's length, never asked for.
  {
    FdpWriter w;
    peer_start(w, 1, true);
    w.integral<std::uint8_t>(0x80).in_range<int>(5, 0, 9);
    w.in_range<int>(1, 0, 3).in_range<std::uint32_t>(2, 0, kChunks).boolean(true);
    write("fuzz_peer_server", "unasked_piece", w.data());
  }
  // Interested with our own bitfield, a request past the end.
  {
    FdpWriter w;
    peer_start(w, 2, false);
    w.integral<std::uint8_t>(0x80).in_range<int>(0, 0, 9);
    w.in_range<int>(0, 0, 4);                                // the real file id
    w.in_range<int>(1, 0, 3).bytes(std::string(1, '\x40'));  // we have chunk 1
    w.in_range<int>(1, 0, 15);
    peer_index_message(w, 0x80, 3, kChunks);
    write("fuzz_peer_server", "request_out_of_range", w.data());
  }
  // Raw serialized messages, one with a payload on a non-piece message.
  {
    pb::PeerMessage interested, request, keep_alive;
    interested.mutable_interested()->set_file_id(file_id);
    request.mutable_request()->set_index(1);
    keep_alive.mutable_keep_alive();
    FdpWriter w;
    peer_start(w, 0, false);
    w.integral<std::uint8_t>(0x10).random_string(interested.SerializeAsString());
    w.integral<std::uint8_t>(0x10).random_string(keep_alive.SerializeAsString());
    w.integral<std::uint8_t>(0x10).random_string(request.SerializeAsString());
    w.integral<std::uint8_t>(0x02).random_string(keep_alive.SerializeAsString()).random_string("stray payload");
    write("fuzz_peer_server", "raw_messages", w.data());
  }
  // Two connections with the same peer id: the second is a duplicate.
  {
    FdpWriter w;
    peer_start(w, 0, true);
    w.integral<std::uint8_t>(0x81);
    peer_start(w, 0, true);
    w.in_range<int>(7, 0, 9).in_range<int>(1, 0, 15);  // keep-alive on connection 1
    peer_index_message(w, 0x80, 3, 0);
    write("fuzz_peer_server", "duplicate_peer", w.data());
  }
  // Interested in an unknown file; a Hello for the control plane.
  {
    FdpWriter w;
    peer_start(w, 0, false);
    w.integral<std::uint8_t>(0x80).in_range<int>(0, 0, 9);
    w.in_range<int>(3, 0, 4).bytes(std::string(32, '\x77')).in_range<int>(0, 0, 3).in_range<int>(1, 0, 15);
    write("fuzz_peer_server", "unknown_file", w.data());
    FdpWriter c;
    c.integral<std::uint8_t>(8).boolean(true).boolean(true).in_range<int>(pb::PLANE_CONTROL, 0, 4);
    c.random_string("").random_string(std::string(64, 'f'));
    write("fuzz_peer_server", "control_hello_bad_cookie", c.data());
  }
}

// fuzz_handoff: the same bytes are tried as a link and as a manifest file.
void handoff_seeds() {
  Manifest m;
  m.size = 3 * kMinChunkSize + 17;
  m.chunk_size = kMinChunkSize;
  for (std::uint8_t i = 0; i < 4; ++i) {
    Sha256Digest d;
    d.bytes.fill(static_cast<std::uint8_t>(0x11 * (i + 1)));
    m.chunk_hashes.push_back(d);
  }
  m.name = "holiday photos & notes.tar";
  handoff::Fingerprint fp{};
  fp.fill(0xc3);
  write("fuzz_handoff", "link", handoff::encode_link({m.file_id(), m.name, m.size, "127.0.0.1:7070", fp}));
  write("fuzz_handoff", "link_ipv6_utf8",
        handoff::encode_link({m.file_id(),
                              "\xc3\xbc"
                              "ber \xe2\x80\xae.txt",
                              0, "[::1]:7070", fp}));
  write("fuzz_handoff", "manifest_file", handoff::encode_manifest_file({m, "127.0.0.1:7070", fp}));
  Manifest empty;
  empty.size = 0;
  empty.name = "empty";
  write("fuzz_handoff", "manifest_file_empty", handoff::encode_manifest_file({empty, "central.example:7070", fp}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  g_root = argv[1];
  frame_decoder();
  manifest();
  sanitize_name();
  central();
  // The peer target shares a file of 2 * 256 KiB + 1000 bytes, its bytes
  // computed as fuzz_peer_server.cpp does: its id, for the raw seeds.
  const fs::path file = fs::temp_directory_path() / "p2pshare-fuzz-corpus-file";
  {
    std::string contents(2 * kDefaultChunkSize + 1000, '\0');
    for (std::size_t i = 0; i < contents.size(); ++i) contents[i] = static_cast<char>((i * 2654435761u) >> 13);
    std::ofstream(file, std::ios::binary).write(contents.data(), static_cast<std::streamsize>(contents.size()));
  }
  const std::string id = to_bytes(build_manifest(file, 1).file_id());
  fs::remove(file);
  peer(id);
  handoff_seeds();
  std::printf("wrote %d seeds under %s\n", g_count, g_root.c_str());
  return 0;
}
