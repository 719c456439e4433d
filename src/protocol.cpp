#include "p2pshare/protocol.hpp"

#include <fmt/format.h>

#include "p2pshare/error.hpp"

namespace p2pshare::protocol {

std::string hello(pb::Plane plane, std::string_view peer_id, std::string_view cookie) {
  pb::Hello message;
  message.set_magic(std::string(kMagic));
  message.set_version(kVersion);
  message.set_plane(plane);
  message.set_peer_id(std::string(peer_id));
  message.set_cookie(std::string(cookie));
  return message.SerializeAsString();
}

pb::Hello parse_hello(std::string_view message) {
  pb::Hello hello;
  if (!hello.ParseFromArray(message.data(), static_cast<int>(message.size())) || hello.magic() != kMagic) {
    throw Error(Errc::protocol, "not a p2pshare hello");
  }
  if (hello.version() != kVersion) {
    throw Error(Errc::protocol, fmt::format("unsupported protocol version {}", hello.version()));
  }
  return hello;
}

pb::Error make_error(int code, const std::string& message) {
  pb::Error error;
  error.set_code(static_cast<pb::ErrorCode>(code));
  error.set_message(message);
  return error;
}

}  // namespace p2pshare::protocol
