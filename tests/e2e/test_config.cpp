// The config file: keys are the long option names, a [command] table is for
// that command, the command line wins, the default path is used when it
// exists, and every mistake in the file is one line naming file, line and
// key, with exit status 2.
#include <catch2/catch.hpp>

#include <fstream>

#include "e2e.hpp"

using namespace p2pshare::test;

namespace {

fs::path write_config(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
  return path;
}

// `p2pshare ARGS...` with the environment `env` ("NAME=VALUE", or "-u NAME").
RunResult run_with_env(const Cluster& c, const std::vector<std::string>& env, const std::vector<std::string>& args) {
  std::vector<std::string> full{"/usr/bin/env"};
  full.insert(full.end(), env.begin(), env.end());
  full.push_back(binary());
  full.insert(full.end(), args.begin(), args.end());
  return run(full, c.logs(), std::chrono::seconds(60));
}

}  // namespace

TEST_CASE("config: each mistake in the file is one line naming file, line and key, exit 2", "[e2e]") {
  Cluster c;
  const auto file = c.path("config.toml");
  const std::string central = "--central-server-addr=" + c.central_addr();
  struct Case {
    std::string what;
    std::string text;
    std::vector<std::string> args;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"unknown key", "# mine\nuplod-limit = \"1M\"\n", {"list-files", central}, {":2:", "uplod-limit", "unknown key"}},
      {"unknown key in a command's table",
       "[list-files]\njson = true\nupload-limit = \"1M\"\n",
       {"list-files", central},
       {":3:", "upload-limit", "unknown key"}},
      {"unknown section", "\n[peer-srever]\naddr = \"127.0.0.1:0\"\n", {"list-files", central}, {":2:", "peer-srever"}},
      {"syntax error", "central-server-addr = = 1\n", {"list-files", central}, {":1:", "syntax error"}},
      {"a rate the option refuses",
       "[peer-server]\naddr = \"127.0.0.1:0\"\nupload-limit = \"fast\"\n",
       {"peer-server", central},
       {":3:", "upload-limit", "malformed rate 'fast'"}},
      {"an address the option refuses",
       "central-server-addr = \"nowhere\"\n",
       {"list-files"},
       {":1:", "central-server-addr", "nowhere"}},
      {"a number that is not one",
       "[peer-server]\nmax-connections = \"many\"\n",
       {"peer-server", central, "--addr=127.0.0.1:0"},
       {":2:", "max-connections", "many"}},
      {"a flag given a string",
       "[list-files]\njson = \"yes\"\n",
       {"list-files", central},
       {":2:", "json", "true or false"}},
      {"an array for a single value",
       "[list-files]\ndata-dir = [\"/a\", \"/b\"]\n",
       {"list-files", central},
       {":2:", "data-dir", "array"}},
      // central-server-addr takes an array (its comma-separated list), but
      // each item is still an address.
      {"an array holding a bad address",
       "[list-files]\ncentral-server-addr = [\"127.0.0.1:1\", \"nowhere\"]\n",
       {"list-files"},
       {":2:", "central-server-addr", "nowhere"}},
      {"a bad duration",
       "[central-server]\nforget-after = \"soon\"\n",
       {"central-server", "--addr=127.0.0.1:0"},
       {":2:", "forget-after", "soon"}},
  };
  for (const auto& k : cases) {
    write_config(file, k.text);
    auto args = k.args;
    args.push_back("--config");
    args.push_back(file.string());
    const auto r = c.run(args);
    auto words = k.words;
    words.push_back(file.string());
    check_fails(k.what, r, 2, {});
    for (const auto& w : words) {
      INFO(k.what << ": stderr should mention " << w << "\n" << describe(r));
      CHECK(r.err.find(w) != std::string::npos);
    }
  }
  // A config file that is not there, named on the command line.
  check_fails("missing --config file", c.run({"list-files", central, "--config", c.path("nope.toml").string()}), 2,
              {"nope.toml"});
}

TEST_CASE("config: values come from the file, the command line wins, tables override the top level", "[e2e]") {
  Cluster c;
  const auto file = c.path("config.toml");
  // Nothing listens on the top-level address; the table's is the real one.
  const std::string dead = unused_address();
  write_config(file, "central-server-addr = \"" + dead + "\"\n[list-files]\ncentral-server-addr = \"" +
                         c.central_addr() + "\"\njson = true\n");
  auto r = c.run({"list-files", "--config", file.string()});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(parse_json(r).is_array());  // json = true came from the file

  // The command line wins over the file.
  r = c.run({"list-files", "--config", file.string(), "--central-server-addr", dead});
  CHECK(r.exit_code == 1);
  CHECK(contains_ci(r.err, dead));

  // A server runs on options from the file alone (its required ones too).
  write_config(file, "[peer-server]\ncentral-server-addr = \"" + c.central_addr() + "\"\naddr = \"127.0.0.1:0\"\n" +
                         "data-dir = \"" + c.path("p").string() + "\"\nlog-level = \"warn\"\n");
  Process peer({binary(), "peer-server", "--config", file.string()}, c.logs());
  const std::string addr = peer.wait_listening();
  CHECK(addr.rfind("127.0.0.1:", 0) == 0);
  CHECK(fs::exists(c.path("p") / "control.cookie"));
  peer.signal(SIGTERM);
  CHECK(peer.wait(std::chrono::seconds(20)) == 0);
}

TEST_CASE("config: the default file is read when present, under XDG_CONFIG_HOME or HOME", "[e2e]") {
  Cluster c;
  const std::string text = "central-server-addr = \"" + c.central_addr() + "\"\n";
  const auto xdg = c.path("xdg");
  write_config(xdg / "p2pshare" / "config.toml", text);
  auto r = run_with_env(c, {"XDG_CONFIG_HOME=" + xdg.string()}, {"list-files", "--json"});
  INFO(describe(r));
  CHECK(r.exit_code == 0);
  CHECK(parse_json(r).is_array());

  const auto home = c.path("home");
  write_config(home / ".config" / "p2pshare" / "config.toml", text);
  r = run_with_env(c, {"-u", "XDG_CONFIG_HOME", "HOME=" + home.string()}, {"list-files", "--json"});
  INFO(describe(r));
  CHECK(r.exit_code == 0);

  // A broken default file is reported like any other.
  write_config(xdg / "p2pshare" / "config.toml", "central-server-addr = [\n");
  r = run_with_env(c, {"XDG_CONFIG_HOME=" + xdg.string()}, {"list-files"});
  check_fails("broken default config", r, 2, {"config.toml", "syntax error"});
}
