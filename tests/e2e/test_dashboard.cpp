// The dashboards in a real browser: Debian's chromium, headless, loads the
// page from the server and runs its JavaScript (--dump-dom after
// --virtual-time-budget prints the DOM as the script left it). Skipped, with
// a message, only when chromium is not installed (scripts/setup.sh installs
// it). With P2PSHARE_SCREENSHOT_DIR set, the screenshots go there (that is
// how docs/dashboard-*.png were made).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <regex>

#include "e2e.hpp"
#include "p2pshare/types.hpp"
#include "support/http_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;

namespace {

// A name that would run script if a page put it into markup (a file name
// cannot hold '/', so no closing tag: an <img> with onerror does the same).
const std::string kHostileName = "<img src=x onerror=alert(1)>.txt";
const std::string kHostileShown = "&lt;img src=x onerror=alert(1)&gt;.txt";

// Debian's package puts it here (run() does not search PATH).
const std::string kChromium = "/usr/bin/chromium";

bool have_chromium() {
  return fs::exists(kChromium);
}

std::vector<std::string> chromium(const std::string& url) {
  return {kChromium,
          "--headless",
          "--no-sandbox",
          "--disable-gpu",
          "--disable-dev-shm-usage",
          "--no-first-run",
          "--virtual-time-budget=3000",
          url};
}

std::string dump_dom(const Cluster& c, const std::string& url) {
  auto args = chromium(url);
  args.insert(args.end() - 1, "--dump-dom");
  const auto r = run(args, c.logs(), 90s);
  if (r.exit_code != 0) {
    throw std::runtime_error("chromium failed (exit " + std::to_string(r.exit_code) + "): " + r.err + r.out);
  }
  return r.out;
}

void screenshot(const Cluster& c, const std::string& url, const std::string& name) {
  const char* dir = std::getenv("P2PSHARE_SCREENSHOT_DIR");
  const fs::path path = dir != nullptr ? fs::path(dir) / name : c.path(name);
  auto args = chromium(url);
  args.insert(args.end() - 1, {"--window-size=1200,760", "--hide-scrollbars", "--screenshot=" + path.string()});
  const auto r = run(args, c.logs(), 90s);
  CHECK(r.exit_code == 0);
  CHECK(fs::exists(path));
}

// The text between <tbody id="ID"> and its </tbody>.
std::string table(const std::string& dom, const std::string& id) {
  const auto start = dom.find("<tbody id=\"" + id + "\">");
  if (start == std::string::npos) return {};
  return dom.substr(start, dom.find("</tbody>", start) - start);
}

}  // namespace

TEST_CASE("dashboard: the peer's shows a download progressing, then complete, names as text", "[e2e][browser]") {
  if (!have_chromium()) {
    WARN("chromium is not installed (scripts/setup.sh installs it): browser test skipped");
    return;
  }
  Cluster c(0);
  // 40 chunks at 1 MiB/s: ten seconds of download to watch.
  const auto file = c.make_file(kHostileName, 40 * kChunkSize, 8);
  const std::string id = c.add_seed(file, "1M");
  c.add_peer(true, {"--http-addr", "127.0.0.1:0"});
  const std::string url = "http://" + http_of(c.peer(1)) + "/?token=" + token_of(c.peer(1));
  // Without the token the page is refused.
  CHECK(http_request(http_of(c.peer(1)), "GET", "/").status == 401);
  REQUIRE(c.wait_holders(id, 1));
  auto download = c.request_in_background(1, id, c.path("watched.txt"));

  // Progress: a row for the download at a percentage short of 100.
  std::optional<int> seen;
  std::string dom;
  REQUIRE(wait_for(
      [&] {
        dom = dump_dom(c, url);
        std::smatch m;
        const std::string rows = table(dom, "downloads");
        static const std::regex percent(R"(</span> (\d+)%)");
        if (rows.find(kHostileShown) != std::string::npos && std::regex_search(rows, m, percent) &&
            std::stoi(m[1]) < 100) {
          seen = std::stoi(m[1]);
        }
        return seen.has_value();
      },
      60s));
  INFO("progress seen: " << *seen << "%");
  // The status line names the central server in use.
  CHECK(dom.find("registered with the central server " + c.central().addr) != std::string::npos);
  screenshot(c, url, "dashboard-peer.png");
  // The name is text: escaped in the DOM, never an element.
  CHECK(dom.find(kHostileShown) != std::string::npos);
  CHECK(dom.find("<img src=\"x\"") == std::string::npos);
  CHECK(dom.find("<img src=x") == std::string::npos);

  // Complete: it moves to the shared table, and the downloads table empties.
  REQUIRE(download->wait(90s) == 0);
  REQUIRE(wait_for(
      [&] {
        dom = dump_dom(c, url);
        return table(dom, "shared").find(id) != std::string::npos &&
               table(dom, "downloads").find("no downloads") != std::string::npos;
      },
      60s));
  CHECK(table(dom, "shared").find(kHostileShown) != std::string::npos);
}

TEST_CASE("dashboard: the central server's lists a file with its holders and chunk copies", "[e2e][browser]") {
  if (!have_chromium()) {
    WARN("chromium is not installed (scripts/setup.sh installs it): browser test skipped");
    return;
  }
  Cluster c(0, ClusterOptions{.central_args = {"--http-addr", "127.0.0.1:0"}});
  const std::string central_http = http_of(c.central());
  for (int i = 0; i < 3; ++i) c.add_peer();
  const std::string url = "http://" + central_http + "/";
  const auto file = c.make_file(kHostileName, 6 * kChunkSize, 4);
  const std::string id = c.register_file(0, file);
  const auto other = c.make_file("holiday.mp4", 3 * kChunkSize + 5, 6);
  const std::string other_id = c.register_file(2, other);
  REQUIRE(c.on_peer(1, "request-file", {"--file-id", id, "--out", c.path("copy.txt").string()}).exit_code == 0);
  REQUIRE(c.wait_holders(id, 2));

  std::string dom;
  REQUIRE(wait_for(
      [&] {
        dom = dump_dom(c, url);
        const std::string files = table(dom, "files");
        return files.find(id) != std::string::npos && files.find(other_id) != std::string::npos;
      },
      60s));
  const std::string files = table(dom, "files");
  CHECK(files.find(kHostileShown) != std::string::npos);
  CHECK(files.find("<img src=") == std::string::npos);
  CHECK(files.find("holiday.mp4") != std::string::npos);
  // Its holders, by address, and each chunk's copies drawn (title per chunk).
  for (std::size_t i : {0, 1}) CHECK(files.find(c.peer(i).addr) != std::string::npos);
  CHECK(files.find("chunk 5: 2 live copies") != std::string::npos);
  CHECK(table(dom, "peers").find(c.peer(2).addr) != std::string::npos);
  screenshot(c, url, "dashboard-central.png");
}
