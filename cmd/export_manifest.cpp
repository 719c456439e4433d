// p2pshare export-manifest --file-id ID --out FILE.p2ps
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <iostream>
#include <system_error>

#include "handoff.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::cmd {
namespace {

// Written beside `path` and renamed over it: a reader never sees half a file.
void write_atomically(const std::filesystem::path& path, const std::string& bytes) {
  const auto temp = path.parent_path() / (path.filename().string() + ".part");
  auto fail = [&](const std::string& what) {
    const std::string why = std::error_code(errno, std::generic_category()).message();
    ::unlink(temp.c_str());
    throw Error(Errc::io, fmt::format("cannot write {}: {} ({})", path.string(), why, what));
  };
  store::FileHandle file(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!file) fail("open");
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(file.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(file.get()) != 0) fail("fsync");
  if (::rename(temp.c_str(), path.c_str()) != 0) fail("rename");
}

}  // namespace

int run_export_manifest(int argc, char** argv) {
  cxxopts::Options options("p2pshare export-manifest",
                           "Write a manifest file (.p2ps: every chunk hash, the name, the size, the central server) "
                           "for a file your peer-server shares: whoever gets it can 'request-file --manifest' it.");
  // clang-format off
  options.add_options()
      ("file-id", "The file's id (64 hex digits)", cxxopts::value<std::string>())
      ("out", "The manifest file to write (FILE.p2ps)", cxxopts::value<std::string>());
  // clang-format on
  add_control_options(options);
  auto args = parse(options, argc, argv, {"file-id", "out"});
  const FileId id = parse_file_id(args["file-id"].as<std::string>());
  const auto out = std::filesystem::absolute(args["out"].as<std::string>());
  if (!out.has_filename()) throw Error(Errc::usage, "--out must name a file");
  if (std::filesystem::is_directory(out)) {
    throw Error(Errc::bad_request, fmt::format("--out {} is a directory", out.string()));
  }
  const auto described = describe_file(args, id);
  const handoff::ManifestFile file{described.manifest, described.central, described.central_fingerprint};
  write_atomically(out, handoff::encode_manifest_file(file));
  if (args.count("json")) {
    print_json({{"path", out.string()},
                {"file_id", to_hex(id)},
                {"name", file.manifest.name},
                {"size", file.manifest.size},
                {"chunks", file.manifest.chunk_count()}});
  } else {
    std::cout << out.string() << "\n";
  }
  return 0;
}

}  // namespace p2pshare::cmd
