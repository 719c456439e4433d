// What share-link and export-manifest ask their peer-server: a file's
// manifest and the central server it uses, with that server's key.
#pragma once

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/handoff.hpp"
#include "p2pshare/manifest.hpp"

namespace p2pshare::cmd {

struct Described {
  Manifest manifest;
  std::string central;
  handoff::Fingerprint central_fingerprint{};
};

inline Described describe_file(const cxxopts::ParseResult& args, const FileId& id) {
  auto control = connect_control(args);
  pb::ControlRequest request;
  request.mutable_describe_file()->set_file_id(to_bytes(id));
  control.send(request);
  auto response = control.receive();
  if (response.has_error()) throw_remote(response.error());
  if (!response.has_description()) throw Error(Errc::protocol, "unexpected answer from the peer-server");
  const auto& d = response.description();
  Described out;
  out.manifest = manifest_from_wire(d.manifest());
  if (out.manifest.file_id() != id) throw Error(Errc::protocol, "the peer-server described another file");
  if (d.central_fingerprint().size() != out.central_fingerprint.size()) {
    throw Error(Errc::protocol, "the peer-server sent a malformed fingerprint");
  }
  std::copy(d.central_fingerprint().begin(), d.central_fingerprint().end(), out.central_fingerprint.begin());
  out.central = d.central_addr();
  return out;
}

}  // namespace p2pshare::cmd
