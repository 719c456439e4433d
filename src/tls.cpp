#include "p2pshare/tls.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "p2pshare/error.hpp"
#include "p2pshare/hash.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::tls {
namespace {

constexpr const char* kCipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

struct BioFree {
  void operator()(BIO* bio) const noexcept { BIO_free(bio); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

[[noreturn]] void fail(const std::string& what) {
  throw Error(Errc::io, fmt::format("{}: {}", what, last_error()));
}

std::string bio_text(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

Cert make_cert(EVP_PKEY* key, const KeyHash& hash) {
  Cert cert(X509_new());
  if (!cert || X509_set_version(cert.get(), 2) != 1) fail("cannot make a certificate");
  std::array<std::uint8_t, 16> serial{};
  random_bytes(serial);
  serial[0] &= 0x7f;  // positive
  struct BnFree {
    void operator()(BIGNUM* bn) const noexcept { BN_free(bn); }
  };
  std::unique_ptr<BIGNUM, BnFree> bn(BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) == nullptr) fail("certificate serial");
  const std::string cn = to_hex(peer_id_of_key_hash(hash));
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                                 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    fail("certificate name");
  }
  // Valid from 1970 to 9999: the certificate only carries the key.
  if (ASN1_TIME_set(X509_getm_notBefore(cert.get()), 0) == nullptr ||
      ASN1_TIME_set_string(X509_getm_notAfter(cert.get()), "99991231235959Z") != 1) {
    fail("certificate validity");
  }
  if (X509_set_pubkey(cert.get(), key) != 1) fail("certificate key");
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, nullptr, NID_basic_constraints, "critical,CA:FALSE");
  if (ext == nullptr || X509_add_ext(cert.get(), ext, -1) != 1) fail("certificate extension");
  X509_EXTENSION_free(ext);
  if (X509_sign(cert.get(), key, nullptr) <= 0) fail("cannot sign the certificate");
  return cert;
}

void fsync_dir(const std::filesystem::path& dir) {
  store::FileHandle handle(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (handle) ::fsync(handle.get());
}

void write_all(int fd, const std::string& bytes, const std::filesystem::path& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
}

std::string read_text(const std::filesystem::path& path) {
  store::FileHandle file(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!file) throw Error(Errc::io, fmt::format("cannot read {}: {}", path.string(), errno_text(errno)));
  std::string text;
  std::array<char, 4096> buffer{};
  while (true) {
    const ssize_t n = ::read(file.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(Errc::io, fmt::format("cannot read {}: {}", path.string(), errno_text(errno)));
    if (n == 0) break;
    text.append(buffer.data(), static_cast<std::size_t>(n));
    if (text.size() > std::size_t{64} * 1024) throw Error(Errc::io, fmt::format("{} is too large", path.string()));
  }
  return text;
}

Cert parse_cert(const std::string& pem, const std::filesystem::path& path) {
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) fail(fmt::format("{} is not a PEM certificate", path.string()));
  return cert;
}

// Writes the certificate under a temporary name and renames it.
void write_cert(const std::filesystem::path& path, X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) fail("cannot encode the certificate");
  const auto temp = path.string() + ".tmp";
  store::FileHandle out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644));
  if (!out) throw Error(Errc::io, fmt::format("cannot create {}: {}", temp, errno_text(errno)));
  write_all(out.get(), bio_text(bio.get()), path);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
  }
}

// Accepts any self-signed Ed25519 certificate: who the other side is comes
// from the key it proved, checked by the caller after the handshake.
int accept_self_signed(int /*preverified*/, X509_STORE_CTX* store) {
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  if (cert == nullptr || X509_STORE_CTX_get_error_depth(store) != 0) return 0;
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr || EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) return 0;
  return X509_verify(cert, key) == 1 ? 1 : 0;
}

}  // namespace

void PKeyFree::operator()(EVP_PKEY* key) const noexcept {
  EVP_PKEY_free(key);
}
void X509Free::operator()(X509* cert) const noexcept {
  X509_free(cert);
}

std::string last_error() {
  std::string out;
  while (const unsigned long code = ERR_get_error()) {
    std::array<char, 256> text{};
    ERR_error_string_n(code, text.data(), text.size());
    if (!out.empty()) out += "; ";
    out += text.data();
  }
  return out.empty() ? "unknown TLS error" : out;
}

KeyHash key_hash_of(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int n = i2d_PUBKEY(key, &der);
  if (n <= 0) fail("cannot encode a public key");
  const auto digest = Sha256::digest(std::span<const std::uint8_t>(der, static_cast<std::size_t>(n)));
  OPENSSL_free(der);
  KeyHash out{};
  std::copy(digest.bytes.begin(), digest.bytes.end(), out.begin());
  return out;
}

std::string fingerprint_of(const KeyHash& hash) {
  return to_hex(std::span<const std::uint8_t>(hash));
}

std::optional<KeyHash> key_hash_from_fingerprint(std::string_view text) {
  // A fingerprint is written like a file id: 64 hex digits of a SHA-256.
  const auto digest = file_id_from_hex(text);
  if (!digest) return std::nullopt;
  KeyHash out{};
  std::copy(digest->bytes.begin(), digest->bytes.end(), out.begin());
  return out;
}

std::string Identity::fingerprint() const {
  return fingerprint_of(key_hash);
}

Identity make_identity(std::optional<std::span<const std::uint8_t, 32>> seed) {
  Identity identity;
  if (seed) {
    identity.key.reset(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed->data(), seed->size()));
  } else {
    identity.key.reset(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  }
  if (!identity.key) fail("cannot make an Ed25519 key");
  identity.key_hash = key_hash_of(identity.key.get());
  identity.cert = make_cert(identity.key.get(), identity.key_hash);
  return identity;
}

Identity load_or_create_identity(const std::filesystem::path& dir, bool upgrade_legacy) {
  const auto key_path = dir / kKeyFile;
  const auto cert_path = dir / kCertFile;
  const auto legacy = dir / kLegacySecretFile;
  std::error_code ec;
  if (!std::filesystem::exists(key_path, ec)) {
    std::optional<std::string> seed;
    if (upgrade_legacy && std::filesystem::exists(legacy, ec)) {
      seed = read_text(legacy);
      if (seed->size() != 32) {
        throw Error(Errc::io,
                    fmt::format("{} is damaged (not 32 bytes): move it away to start as a new peer", legacy.string()));
      }
    }
    Identity made =
        seed ? make_identity(std::span<const std::uint8_t, 32>(reinterpret_cast<const std::uint8_t*>(seed->data()), 32))
             : make_identity();
    Bio bio(BIO_new(BIO_s_mem()));
    if (!bio || PEM_write_bio_PrivateKey(bio.get(), made.key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
      fail("cannot encode the key");
    }
    // O_EXCL: never replace a key, even one another process just wrote.
    store::FileHandle out(::open(key_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (out) {
      try {
        write_all(out.get(), bio_text(bio.get()), key_path);
      } catch (const Error&) {
        ::unlink(key_path.c_str());
        throw;
      }
      write_cert(cert_path, made.cert.get());
      fsync_dir(dir);
      if (seed) {
        const auto old = dir / (std::string(kLegacySecretFile) + ".old");
        if (::rename(legacy.c_str(), old.c_str()) != 0) {
          throw Error(Errc::io, fmt::format("cannot rename {}: {}", legacy.string(), errno_text(errno)));
        }
        fsync_dir(dir);
      }
      return made;
    }
    if (errno != EEXIST) {
      throw Error(Errc::io, fmt::format("cannot create {}: {}", key_path.string(), errno_text(errno)));
    }
  }
  const std::string pem = read_text(key_path);
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Identity identity;
  identity.key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!identity.key || EVP_PKEY_get_id(identity.key.get()) != EVP_PKEY_ED25519) {
    throw Error(Errc::io, fmt::format("{} is not an Ed25519 private key in PEM: {}", key_path.string(), last_error()));
  }
  identity.key_hash = key_hash_of(identity.key.get());
  if (std::filesystem::exists(cert_path, ec)) {
    identity.cert = parse_cert(read_text(cert_path), cert_path);
    if (X509_check_private_key(identity.cert.get(), identity.key.get()) != 1) {
      ERR_clear_error();
      throw Error(Errc::io, fmt::format("{} does not hold the key of {}: remove the certificate to make a new one",
                                        cert_path.string(), key_path.string()));
    }
  } else {
    identity.cert = make_cert(identity.key.get(), identity.key_hash);
    write_cert(cert_path, identity.cert.get());
    fsync_dir(dir);
  }
  return identity;
}

KeyHash key_hash_of_cert_file(const std::filesystem::path& path) {
  const Cert cert = parse_cert(read_text(path), path);
  EVP_PKEY* key = X509_get0_pubkey(cert.get());
  if (key == nullptr) fail(fmt::format("{} holds no public key", path.string()));
  return key_hash_of(key);
}

std::shared_ptr<asio::ssl::context> make_context(Side side, const Identity* identity) {
  auto context = std::make_shared<asio::ssl::context>(side == Side::server ? asio::ssl::context::tls_server
                                                                           : asio::ssl::context::tls_client);
  SSL_CTX* ctx = context->native_handle();
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 || SSL_CTX_set_ciphersuites(ctx, kCipherSuites) != 1) {
    fail("cannot set up TLS 1.3");
  }
  // No resumption: every connection is a full handshake, nothing is cached.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // Idle connections keep no record buffers.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (identity != nullptr) {
    if (SSL_CTX_use_certificate(ctx, identity->cert.get()) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, identity->key.get()) != 1) {
      fail("cannot use the key pair");
    }
  }
  // Server: asks for a certificate, does not require one (the control plane
  // and listing clients have none). Client: the server must present one.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, accept_self_signed);
  return context;
}

std::optional<std::string> check_central_key(const std::string& address, const KeyHash& presented,
                                             const std::optional<KeyHash>& pinned,
                                             const std::filesystem::path& data_dir) {
  const std::string fp = fingerprint_of(presented);
  if (pinned) {
    if (*pinned == presented) return std::nullopt;
    return fmt::format("central server {} presented key fingerprint {} but --central-fingerprint pins {}", address, fp,
                       fingerprint_of(*pinned));
  }
  const auto path = data_dir / kKnownCentralsFile;
  std::string text;
  std::error_code ec;
  if (std::filesystem::exists(path, ec)) text = read_text(path);
  std::size_t at = 0;
  while (at < text.size()) {
    auto end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + at, end - at);
    at = end + 1;
    const auto space = line.find(' ');
    if (space == std::string_view::npos || line.substr(0, space) != address) continue;
    const auto recorded = line.substr(space + 1);
    if (recorded == fp) return std::nullopt;
    return fmt::format(
        "central server {} presented key fingerprint {} but {} was recorded in {}; if the server's key really "
        "changed, remove that line or pass --central-fingerprint {}",
        address, fp, recorded, path.string(), fp);
  }
  // First contact: remembered, under a temporary name then renamed.
  if (!text.empty() && text.back() != '\n') text += '\n';
  text += fmt::format("{} {}\n", address, fp);
  std::filesystem::create_directories(data_dir, ec);
  const auto temp = path.string() + fmt::format(".{}.tmp", ::getpid());
  store::FileHandle out(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!out) throw Error(Errc::io, fmt::format("cannot create {}: {}", temp, errno_text(errno)));
  write_all(out.get(), text, path);
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    throw Error(Errc::io, fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
  }
  return std::nullopt;
}

std::optional<KeyHash> peer_key_hash(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return std::nullopt;
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) return std::nullopt;
  return key_hash_of(key);
}

}  // namespace p2pshare::tls
