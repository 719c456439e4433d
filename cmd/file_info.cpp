// p2pshare file-info --file-id ID
#include <iostream>

#include <fmt/format.h>

#include "command.hpp"
#include "p2pshare/bitfield.hpp"
#include "p2pshare/error.hpp"
#include "p2pshare/manifest.hpp"
#include "p2pshare/store.hpp"

namespace p2pshare::cmd {

int run_file_info(int argc, char** argv) {
  cxxopts::Options options("p2pshare file-info",
                           "A file's size, chunk size, chunk count, holders, and live copies of each chunk.");
  options.add_options()("file-id", "The file's id (64 hex digits)", cxxopts::value<std::string>());
  add_central_options(options);
  auto args = parse(options, argc, argv, {"file-id"});
  const FileId id = parse_file_id(args["file-id"].as<std::string>());
  pb::CentralRequest request;
  request.mutable_get_file()->set_file_id(to_bytes(id));
  auto response = ask_central(central_address(args), request);
  if (!response.has_file()) throw Error(Errc::protocol, "unexpected answer from the central server");
  const Manifest manifest = manifest_from_wire(response.file().manifest());
  // Metadata from the network is checked against the id we asked for.
  if (manifest.file_id() != id)
    throw Error(Errc::verification, "the central server's metadata does not match the file id");
  const std::uint32_t count = manifest.chunk_count();
  std::vector<std::uint32_t> copies(count, 0);
  nlohmann::json holders = nlohmann::json::array();
  std::vector<std::vector<std::string>> rows;
  for (const auto& h : response.file().holders()) {
    const std::string peer =
        to_hex(std::span(reinterpret_cast<const std::uint8_t*>(h.peer_id().data()), h.peer_id().size()));
    std::uint32_t has = count;
    if (h.bitfield().empty()) {
      for (auto& c : copies) ++c;
    } else if (auto bits = Bitfield::from_wire(h.bitfield(), count)) {
      has = bits->count();
      for (std::uint32_t i = 0; i < count; ++i) copies[i] += bits->test(ChunkIndex{i}) ? 1 : 0;
    } else {
      has = 0;
    }
    const std::string addr = cli::Address{h.host(), static_cast<std::uint16_t>(h.port())}.to_string();
    holders.push_back({{"peer_id", peer}, {"addr", addr}, {"complete", h.bitfield().empty()}, {"chunks", has}});
    rows.push_back({peer, addr, fmt::format("{}/{}", has, count)});
  }
  if (args.count("json")) {
    print_json({{"file_id", to_hex(id)},
                {"name", manifest.name},
                {"names", response.file().names()},
                {"size", manifest.size},
                {"chunk_size", manifest.chunk_size},
                {"chunks", count},
                {"holders", holders},
                {"chunk_copies", copies},
                {"replicas", response.file().replicas()},
                {"live_copies", response.file().live_copies()}});
    return 0;
  }
  std::cout << fmt::format(
      "file id     {}\nname        {}\nsize        {} ({} bytes)\nchunk size  {}\nchunks      {}\n", to_hex(id),
      store::display_name(manifest.name), cli::format_bytes(manifest.size), manifest.size,
      cli::format_bytes(manifest.chunk_size), count);
  std::cout << fmt::format("holders     {}\n", rows.size());
  std::cout << fmt::format("replicas    target {}, live copies {}\n\n", response.file().replicas(),
                           response.file().live_copies());
  if (!rows.empty()) {
    print_table({"PEER ID", "ADDRESS", "CHUNKS"}, rows);
    std::cout << "\n";
  }
  // Live copies per chunk, as runs: "chunks 0-4095: 2 copies".
  std::cout << "copies per chunk\n";
  for (std::uint32_t start = 0; start < count;) {
    std::uint32_t end = start;
    while (end + 1 < count && copies[end + 1] == copies[start]) ++end;
    std::cout << fmt::format("  chunks {}-{}: {} cop{}\n", start, end, copies[start], copies[start] == 1 ? "y" : "ies");
    start = end + 1;
  }
  return 0;
}

}  // namespace p2pshare::cmd
