// Constants and helpers every plane shares: the Hello handshake and the
// per-plane frame limits (docs/protocol.md lists them).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common.pb.h"
#include "p2pshare/manifest.hpp"
#include "p2pshare/wire.hpp"

namespace p2pshare::protocol {

inline constexpr std::string_view kMagic = "p2pshare";
inline constexpr std::uint32_t kVersion = 1;

// Peer plane: small messages; payloads up to one chunk.
inline constexpr wire::Limits kPeerLimits{64 * 1024, kMaxChunkSize};
// Central plane, answers: a file record carries up to 2 MiB of hashes plus holders.
inline constexpr wire::Limits kCentralLimits{8 * 1024 * 1024, 0};
// Central plane, requests the server accepts: small until the connection has
// registered (only a peer announces a manifest of up to 2 MiB of hashes).
inline constexpr wire::Limits kCentralRequestLimits{16 * 1024, 0};
inline constexpr wire::Limits kCentralPeerRequestLimits{3 * 1024 * 1024, 0};
// Control plane, answers: a status lists every file.
inline constexpr wire::Limits kControlLimits{4 * 1024 * 1024, 0};
// request-file --stdout: the most file bytes one StreamData answer carries,
// inline or as its frame's payload.
inline constexpr std::uint32_t kStreamPieceMax = std::uint32_t{1} << 20;
// Control plane, answers to a stream that asked for payloads: the same
// messages, and payloads of up to one stream piece.
inline constexpr wire::Limits kControlStreamLimits{kControlLimits.max_message, kStreamPieceMax};
// Control plane, requests the peer-server accepts: a path or an id.
inline constexpr wire::Limits kControlRequestLimits{64 * 1024, 0};
// What a server accepts before it knows the plane: a Hello.
inline constexpr wire::Limits kHelloLimits{1024, 0};

std::string hello(pb::Plane plane, std::string_view peer_id = {}, std::string_view cookie = {});
// Parses and checks magic and version; throws Error(protocol) otherwise.
pb::Hello parse_hello(std::string_view message);

pb::Error make_error(int code, const std::string& message);

}  // namespace p2pshare::protocol
