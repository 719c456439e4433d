#include "p2pshare/handoff.hpp"

#include <charconv>
#include <cstring>
#include <optional>

#include <fmt/format.h>

#include "common.pb.h"
#include "p2pshare/cli.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"

namespace p2pshare::handoff {
namespace {

constexpr std::string_view kHex = "0123456789ABCDEF";

bool unreserved(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// What may stand unencoded in a query value (RFC 3986 pchar and "/", less
// the "&" and "=" that separate parameters).
bool literal_in_value(char c) {
  return unreserved(c) || std::string_view(":@!$'()*+,;/[]").find(c) != std::string_view::npos;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

[[noreturn]] void malformed(const std::string& why) {
  throw Error(Errc::usage, "malformed link: " + why);
}

std::string percent_decode(std::string_view key, std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      const int high = i + 2 < text.size() ? hex_value(text[i + 1]) : -1;
      const int low = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
      if (high < 0 || low < 0) malformed(fmt::format("'{}' has a '%' not followed by two hex digits", key));
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else if (literal_in_value(c)) {
      out.push_back(c);
    } else {
      malformed(fmt::format("'{}' holds a character that must be percent-encoded (byte {:#04x})", key,
                            static_cast<unsigned>(static_cast<unsigned char>(c))));
    }
  }
  return out;
}

bool valid_utf8_text(std::string_view text) {
  while (!text.empty()) {
    const auto c = decode_utf8(text);
    if (c.length == 0) return false;
    text.remove_prefix(c.length);
  }
  return true;
}

std::optional<Fingerprint> fingerprint_from_hex(std::string_view hex) {
  // A fingerprint is a SHA-256, spelled as file ids are.
  auto digest = file_id_from_hex(hex);
  if (!digest) return std::nullopt;
  return digest->bytes;
}

// The central address as a link or manifest may carry it: HOST:PORT with a
// port that can be reached, in printable ASCII.
bool valid_central(const std::string& text) {
  // It is shown in messages: printable ASCII only.
  for (const char c : text) {
    if (c <= ' ' || c > '~') return false;
  }
  try {
    return cli::parse_address(text).port != 0 && text.size() <= 300;
  } catch (const Error&) {
    return false;
  }
}

// --- big-endian fields --------------------------------------------------------

void put_u16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v & 0xff));
}
void put_u32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}
void put_u64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}
  std::uint64_t number(std::size_t width) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < width; ++i) v = (v << 8) | bytes_[at_ + i];
    at_ += width;
    return v;
  }
  std::span<const std::uint8_t> take(std::size_t n) {
    auto out = bytes_.subspan(at_, n);
    at_ += n;
    return out;
  }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t at_ = 0;
};

[[noreturn]] void damaged(const std::string& why) {
  throw Error(Errc::verification, "not a usable manifest file: " + why);
}

constexpr std::size_t kHeaderSize = 96;
constexpr std::size_t kChecksumSize = 32;
constexpr std::size_t kMaxCentralLength = 300;

}  // namespace

std::string percent_encode(std::string_view bytes, std::string_view keep) {
  std::string out;
  out.reserve(bytes.size() * 3);
  for (const char c : bytes) {
    if (unreserved(c) || keep.find(c) != std::string_view::npos) {
      out.push_back(c);
    } else {
      const auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    }
  }
  return out;
}

std::string encode_link(const ShareLink& link) {
  return fmt::format("{}v{}/{}?name={}&size={}&central={}&fp={}", kLinkScheme, kLinkVersion, to_hex(link.file_id),
                     percent_encode(link.name), link.size, percent_encode(link.central, ":[]"),
                     to_hex(std::span<const std::uint8_t>(link.central_fingerprint)));
}

ShareLink decode_link(std::string_view text) {
  if (text.size() > kMaxLinkLength) malformed(fmt::format("longer than {} characters", kMaxLinkLength));
  // The scheme is case-insensitive (RFC 3986); nothing else is.
  if (text.size() < kLinkScheme.size()) malformed("it does not start with p2pshare://");
  for (std::size_t i = 0; i < kLinkScheme.size(); ++i) {
    const char c = text[i];
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != kLinkScheme[i]) malformed("it does not start with p2pshare://");
  }
  text.remove_prefix(kLinkScheme.size());
  if (text.find('#') != std::string_view::npos) malformed("a link has no '#' part");

  const auto slash = text.find('/');
  if (slash == std::string_view::npos) malformed("expected p2pshare://v1/FILE-ID?...");
  const std::string_view version = text.substr(0, slash);
  unsigned number = 0;
  if (version.size() < 2 || version[0] != 'v' ||
      std::from_chars(version.data() + 1, version.data() + version.size(), number).ptr !=
          version.data() + version.size()) {
    malformed(fmt::format("expected a version such as v1 after p2pshare://, not '{}'", version));
  }
  if (number != kLinkVersion) {
    throw Error(Errc::usage, fmt::format("link version {} is not supported: this p2pshare reads version {} links "
                                         "(a newer p2pshare may read it)",
                                         version, kLinkVersion));
  }
  text.remove_prefix(slash + 1);

  const auto question = text.find('?');
  if (question == std::string_view::npos) malformed("no '?' before the name, size and central server");
  ShareLink link;
  auto id = file_id_from_hex(text.substr(0, question));
  if (!id) malformed("the file id must be 64 hex digits");
  link.file_id = *id;
  text.remove_prefix(question + 1);

  bool have_name = false, have_size = false, have_central = false, have_fp = false;
  while (true) {
    const auto amp = text.find('&');
    const std::string_view pair = text.substr(0, amp);
    const auto eq = pair.find('=');
    if (eq == std::string_view::npos) malformed(fmt::format("'{}' is not KEY=VALUE", pair.substr(0, 40)));
    const std::string_view key = pair.substr(0, eq);
    const std::string_view raw = pair.substr(eq + 1);
    auto once = [&](bool& seen) {
      if (seen) malformed(fmt::format("'{}' appears twice", key));
      seen = true;
    };
    if (key == "name") {
      once(have_name);
      link.name = percent_decode(key, raw);
      if (link.name.empty()) malformed("the name is empty");
      if (link.name.size() > kMaxHandoffNameLength) malformed("the name is too long");
      if (!valid_utf8_text(link.name)) malformed("the name is not UTF-8");
    } else if (key == "size") {
      once(have_size);
      const auto [end, ec] = std::from_chars(raw.data(), raw.data() + raw.size(), link.size);
      if (raw.empty() || ec != std::errc() || end != raw.data() + raw.size() || (raw.size() > 1 && raw[0] == '0') ||
          link.size > kMaxFileSize) {
        malformed("the size must be a number of bytes (at most 1 TiB)");
      }
    } else if (key == "central") {
      once(have_central);
      link.central = percent_decode(key, raw);
      if (!valid_central(link.central)) malformed("the central server must be HOST:PORT");
    } else if (key == "fp") {
      once(have_fp);
      auto fp = fingerprint_from_hex(raw);
      if (!fp) malformed("the fingerprint (fp) must be 64 hex digits");
      link.central_fingerprint = *fp;
    } else {
      malformed(fmt::format("unknown parameter '{}'", key.substr(0, 40)));
    }
    if (amp == std::string_view::npos) break;
    text.remove_prefix(amp + 1);
  }
  if (!have_name) malformed("no name");
  if (!have_size) malformed("no size");
  if (!have_central) malformed("no central server");
  if (!have_fp) malformed("no fingerprint (fp)");
  return link;
}

std::string encode_manifest_file(const ManifestFile& file) {
  const Manifest& m = file.manifest;
  if (m.name.size() > kMaxHandoffNameLength || file.central.size() > kMaxCentralLength) {
    throw Error(Errc::bad_request, "the name or the central server's address is too long for a manifest file");
  }
  std::string out;
  out.reserve(kHeaderSize + file.central.size() + m.name.size() + m.chunk_hashes.size() * 32 + kChecksumSize);
  out.append(kManifestMagic);
  put_u32(out, kManifestVersion);
  const FileId id = m.file_id();
  out.append(reinterpret_cast<const char*>(id.bytes.data()), id.bytes.size());
  put_u64(out, m.size);
  put_u32(out, m.chunk_size);
  put_u32(out, m.chunk_count());
  out.append(reinterpret_cast<const char*>(file.central_fingerprint.data()), file.central_fingerprint.size());
  put_u16(out, static_cast<std::uint16_t>(file.central.size()));
  put_u16(out, static_cast<std::uint16_t>(m.name.size()));
  out.append(file.central);
  out.append(m.name);
  out.append(encode_chunk_hashes(m.chunk_hashes));
  const auto sum = Sha256::digest(std::span(reinterpret_cast<const std::uint8_t*>(out.data()), out.size()));
  out.append(reinterpret_cast<const char*>(sum.bytes.data()), sum.bytes.size());
  return out;
}

ManifestFile decode_manifest_file(std::span<const std::uint8_t> bytes) {
  if (bytes.size() < kManifestMagic.size() ||
      std::memcmp(bytes.data(), kManifestMagic.data(), kManifestMagic.size()) != 0) {
    damaged("it does not start with the p2pshare manifest magic (is it a .p2ps file?)");
  }
  if (bytes.size() < kHeaderSize + kChecksumSize) damaged(fmt::format("truncated ({} bytes)", bytes.size()));
  Reader in(bytes);
  in.take(kManifestMagic.size());
  const auto version = in.number(4);
  if (version != kManifestVersion) {
    damaged(fmt::format("version {} (this p2pshare reads version {})", version, kManifestVersion));
  }
  FileId stored_id;
  std::memcpy(stored_id.bytes.data(), in.take(32).data(), 32);
  ManifestFile file;
  file.manifest.size = in.number(8);
  file.manifest.chunk_size = static_cast<std::uint32_t>(in.number(4));
  const auto count = in.number(4);
  std::memcpy(file.central_fingerprint.data(), in.take(32).data(), 32);
  const auto central_length = in.number(2);
  const auto name_length = in.number(2);
  if (count > kMaxChunkCount || central_length > kMaxCentralLength || name_length > kMaxHandoffNameLength) {
    damaged("a length in its header is out of range");
  }
  const std::uint64_t expected = kHeaderSize + central_length + name_length + count * 32 + kChecksumSize;
  if (bytes.size() < expected) damaged(fmt::format("truncated ({} of {} bytes)", bytes.size(), expected));
  if (bytes.size() > expected) damaged(fmt::format("{} bytes after its end", bytes.size() - expected));
  const auto body = bytes.first(bytes.size() - kChecksumSize);
  const auto sum = Sha256::digest(body);
  if (std::memcmp(sum.bytes.data(), bytes.data() + body.size(), kChecksumSize) != 0) {
    damaged("damaged (its checksum does not match its contents)");
  }
  const auto central = in.take(central_length);
  file.central.assign(reinterpret_cast<const char*>(central.data()), central.size());
  const auto name = in.take(name_length);
  const std::string name_text(reinterpret_cast<const char*>(name.data()), name.size());
  const auto hashes = in.take(count * 32);
  // The manifest's own rules, as for one from the network.
  pb::Manifest wire;
  wire.set_size(file.manifest.size);
  wire.set_chunk_size(file.manifest.chunk_size);
  wire.set_chunk_hashes(std::string(reinterpret_cast<const char*>(hashes.data()), hashes.size()));
  try {
    file.manifest = manifest_from_wire(wire);
  } catch (const Error& e) {
    damaged(e.what());
  }
  if (file.manifest.chunk_count() != count) damaged("its chunk count does not fit its size");
  if (name_text.empty() || !valid_utf8_text(name_text)) damaged("its name is empty or not UTF-8");
  file.manifest.name = name_text;
  if (!valid_central(file.central)) damaged("its central server is not HOST:PORT");
  if (file.manifest.file_id() != stored_id) {
    damaged(fmt::format("its file id {} is not the one its chunk hashes give ({})", to_hex(stored_id),
                        to_hex(file.manifest.file_id())));
  }
  return file;
}

}  // namespace p2pshare::handoff
