// Accounts, groups and group-only files, end to end with the real binary:
// three users and the life of a group, what outsiders see and get, the
// session across a restart, a download outliving the central server,
// holders refusing every misused capability (spoken directly), and a
// group's file renamed in a shared folder staying the group's.
#include <filesystem>
#include <fstream>
#include <thread>

#include "common.pb.h"
#include "e2e/e2e.hpp"
#include "p2pshare/accounts.hpp"
#include "peer.pb.h"
#include "support/http_client.hpp"

using namespace p2pshare;
using namespace p2pshare::test;
namespace fs = std::filesystem;

namespace {

constexpr const char* kPassword = "pw-unique-Zq8-horse-battery";
constexpr const char* kGroup = "team";

// `p2pshare ARGS` on peer i (its --peer-addr and --data-dir) with `input`
// as standard input: how a script passes --password-stdin.
RunResult with_stdin(Cluster& c, std::size_t i, const std::string& input, const std::vector<std::string>& args) {
  const auto file = c.path("stdin-" + std::to_string(i));
  std::ofstream(file) << input << "\n";
  std::vector<std::string> full{"/bin/sh", "-c", "f=$1; shift; exec \"$@\" < \"$f\"", "sh", file.string(), binary()};
  full.insert(full.end(), args.begin(), args.end());
  full.insert(full.end(), {"--peer-addr", c.peer(i).addr, "--data-dir", c.peer(i).data_dir.string()});
  return run(full, c.logs());
}

void create_and_login(Cluster& c, std::size_t i, const std::string& user) {
  auto r = with_stdin(c, i, kPassword, {"create-user", "--user", user, "--password-stdin"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  r = with_stdin(c, i, kPassword, {"login", "--user", user, "--password-stdin"});
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "logged in as " + user + "\n");
}

std::string ok(const RunResult& r) {
  INFO(describe(r));
  REQUIRE(r.exit_code == 0);
  return r.out;
}

// Peers 0, 1 and 2 log in as alice, bob and carol; alice's group kGroup has
// bob as a member, carol is not one.
void form_team(Cluster& c) {
  create_and_login(c, 0, "alice");
  create_and_login(c, 1, "bob");
  create_and_login(c, 2, "carol");
  ok(c.on_peer(0, "create-group", {"--group", kGroup}));
  ok(c.on_peer(1, "join-group", {"--group", kGroup}));
  ok(c.on_peer(0, "accept-request", {"--group", kGroup, "--user", "bob"}));
}

ClusterOptions with_central_http() {
  ClusterOptions options;
  options.central_args = {"--http-addr", "127.0.0.1:0"};
  return options;
}

bool listed_publicly(Cluster& c, const std::string& id) {
  for (const auto& f : c.list_files()) {
    if (f["file_id"] == id) return true;
  }
  return false;
}

// Everything under `dir`, concatenated (binary files included).
std::string all_bytes(const fs::path& dir) {
  std::string out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.is_regular_file()) out += read_file(entry.path());
  }
  return out;
}

}  // namespace

TEST_CASE("accounts: the life of a group, with private files checked at the central server and the holders") {
  ClusterOptions options;
  options.central_args = {"--capability-lifetime", "20s", "--http-addr", "127.0.0.1:0"};
  Cluster c(3, options);  // peer0: alice, peer1: bob, peer2: carol
  create_and_login(c, 0, "alice");
  create_and_login(c, 1, "bob");
  create_and_login(c, 2, "carol");

  // One message for a wrong password and an unknown user.
  check_fails("wrong password", with_stdin(c, 2, "not-the-password", {"login", "--user", "carol", "--password-stdin"}),
              1, {"wrong user or password"});
  check_fails("unknown user", with_stdin(c, 2, kPassword, {"login", "--user", "nobody", "--password-stdin"}), 1,
              {"wrong user or password"});
  check_fails("taken name", with_stdin(c, 2, kPassword, {"create-user", "--user", "alice", "--password-stdin"}), 1,
              {"already exists"});
  check_fails("bad name", with_stdin(c, 2, kPassword, {"create-user", "--user", "../x", "--password-stdin"}), 1,
              {"name"});
  CHECK(ok(c.on_peer(2, "whoami")) == "carol\n");  // the failed logins kept the session

  // The group: created, asked, accepted.
  ok(c.on_peer(0, "create-group", {"--group", kGroup}));
  ok(c.on_peer(1, "join-group", {"--group", kGroup}));
  ok(c.on_peer(2, "join-group", {"--group", kGroup}));
  CHECK(ok(c.on_peer(0, "list-requests", {"--group", kGroup})) == "bob\ncarol\n");
  check_fails("not the owner", c.on_peer(1, "list-requests", {"--group", kGroup}), 1, {"not the owner"});
  check_fails("unknown group", c.on_peer(1, "join-group", {"--group", "nosuch"}), 1, {"unknown group"});
  ok(c.on_peer(0, "accept-request", {"--group", kGroup, "--user", "bob"}));
  ok(c.on_peer(0, "reject-request", {"--group", kGroup, "--user", "carol"}));
  const auto groups = nlohmann::json::parse(ok(c.on_peer(1, "list-groups", {"--json"})));
  REQUIRE(groups.size() == 1);
  CHECK(groups[0]["group"] == kGroup);
  CHECK(groups[0]["owner"] == "alice");
  CHECK(groups[0]["members"] == 2);
  CHECK(groups[0]["member"] == true);
  CHECK(nlohmann::json::parse(ok(c.on_peer(2, "list-groups", {"--json"})))[0]["member"] == false);

  // A private file: listed to members only, never publicly.
  const auto file = c.make_file("plans.bin", 600 * 1024, 7);
  const auto id_line = ok(c.on_peer(0, "register-file", {"--path", file.string(), "--group", kGroup}));
  const std::string id = id_line.substr(0, 64);
  REQUIRE(is_file_id(id));
  check_fails("register into a group one is not in",
              c.on_peer(2, "register-file", {"--path", file.string(), "--group", kGroup}), 1, {"not a member"});
  CHECK_FALSE(listed_publicly(c, id));
  {
    // Nor on the central server's HTTP side (its dashboard reads /api/files).
    const auto http = c.central().process->wait_for_line("http on ");
    REQUIRE(http);
    const auto listed = http_request(*http, "GET", "/api/files");
    CHECK(listed.status == 200);
    CHECK(listed.body.find(id) == std::string::npos);
    CHECK(http_request(*http, "GET", "/api/files/" + id).status == 404);
  }
  CHECK(ok(c.on_peer(1, "list-files", {"--group", kGroup})).find(id) != std::string::npos);
  check_fails("a non-member lists the group", c.on_peer(2, "list-files", {"--group", kGroup}), 1, {"not a member"});

  // A member downloads it; a non-member gets nothing, and nothing is written.
  const auto bob_out = c.path("bob-plans.bin");
  ok(c.on_peer(1, "request-file", {"--file-id", id, "--out", bob_out.string()}));
  CHECK(read_file(bob_out) == read_file(file));
  const auto carol_out = c.path("carol-plans.bin");
  check_fails("a non-member requests it", c.on_peer(2, "request-file", {"--file-id", id, "--out", carol_out.string()}),
              1, {"no file"});
  CHECK_FALSE(fs::exists(carol_out));
  CHECK_FALSE(listed_publicly(c, id));  // bob's copy is the group's too

  // Leaving: the central server refuses at once (holders within the
  // capability's lifetime: see the protocol tests below).
  ok(c.on_peer(1, "leave-group", {"--group", kGroup}));
  check_fails("a former member lists the group", c.on_peer(1, "list-files", {"--group", kGroup}), 1, {"not a member"});
  const auto later = c.make_file("later.bin", 100 * 1024, 8);
  const std::string later_id =
      ok(c.on_peer(0, "register-file", {"--path", later.string(), "--group", kGroup})).substr(0, 64);
  check_fails("a former member requests a new file",
              c.on_peer(1, "request-file", {"--file-id", later_id, "--out", c.path("bob-later.bin").string()}), 1,
              {"no file"});
  ok(c.on_peer(1, "join-group", {"--group", kGroup}));
  ok(c.on_peer(0, "accept-request", {"--group", kGroup, "--user", "bob"}));

  // Logout ends the session here and at the central server.
  ok(c.on_peer(2, "logout"));
  check_fails("whoami after logout", c.on_peer(2, "whoami"), 1, {"nobody is logged in"});
  CHECK_FALSE(fs::exists(c.peer(2).data_dir / "session"));

  // The session survives a restart of the peer-server; status shows it.
  c.start_peer_with(0, {"--upload-limit", "2M"});
  CHECK(ok(c.on_peer(0, "whoami")) == "alice\n");
  CHECK(c.status_json(0)["user"] == "alice");

  // A download goes on while the central server is killed: the holder
  // checks the capability it already has, offline.
  const auto big = c.make_file("big.bin", 6 * 1024 * 1024, 9);
  const std::string big_id =
      ok(c.on_peer(0, "register-file", {"--path", big.string(), "--group", kGroup})).substr(0, 64);
  const auto big_out = c.path("bob-big.bin");
  auto download = c.request_in_background(1, big_id, big_out);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (c.have_bytes(1, big_id) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(c.have_bytes(1, big_id) > 0);
  Cluster::kill(c.central());
  CHECK(download->wait(std::chrono::seconds(60)) == 0);
  CHECK(read_file(big_out) == read_file(big));

  // The password is nowhere in the central server's files or any log.
  CHECK(all_bytes(c.central().data_dir).find(kPassword) == std::string::npos);
  CHECK(all_bytes(c.logs()).find(kPassword) == std::string::npos);
}

namespace {

// A peer-plane client with its own key, speaking to a holder by hand.
struct RawPeer {
  RawPeer(const std::string& addr, const tls::Identity& identity) : client(protocol::kPeerLimits, &identity) {
    auto [host, port] = split(addr);
    client.connect(host, port, std::chrono::seconds(5));
    client.send(protocol::hello(pb::PLANE_PEER, to_bytes(identity.peer_id())), std::chrono::seconds(5));
    pb::Welcome welcome;
    REQUIRE(welcome.ParseFromString(client.receive(std::chrono::seconds(5))));
  }
  pb::PeerMessage send(const pb::PeerMessage& message) {
    client.send(message.SerializeAsString(), std::chrono::seconds(5));
    pb::PeerMessage reply;
    REQUIRE(reply.ParseFromString(client.receive(std::chrono::seconds(10))));
    return reply;
  }
  pb::PeerMessage interested(const std::string& file_id, const std::vector<pb::Capability>& capabilities) {
    pb::PeerMessage message;
    message.mutable_interested()->set_file_id(file_id);
    for (const auto& capability : capabilities) *message.mutable_interested()->add_capability() = capability;
    return send(message);
  }
  wire::SyncClient client;
};

void check_refused(const pb::PeerMessage& reply, const std::string& why) {
  INFO("the holder answered: " << reply.DebugString());
  REQUIRE(reply.has_error());
  CHECK(reply.error().code() == pb::ERROR_UNAUTHORIZED);
  CHECK(contains_ci(reply.error().message(), why));
}

std::string raw_id(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

}  // namespace

TEST_CASE("accounts: a holder refuses every misused capability, spoken to directly") {
  // One cluster, one check after another (each on a fresh connection).
  Cluster c(2);  // peer0: alice holds a group's file; peer1: bob, a member
  create_and_login(c, 0, "alice");
  create_and_login(c, 1, "bob");
  ok(c.on_peer(0, "create-group", {"--group", kGroup}));
  ok(c.on_peer(1, "join-group", {"--group", kGroup}));
  ok(c.on_peer(0, "accept-request", {"--group", kGroup, "--user", "bob"}));
  const auto file = c.make_file("secret.bin", 300 * 1024, 3);
  const std::string id =
      raw_id(ok(c.on_peer(0, "register-file", {"--path", file.string(), "--group", kGroup})).substr(0, 64));

  const auto central = tls::load_or_create_identity(c.central().data_dir, false);
  const auto mallory = tls::make_identity();
  const auto now = std::chrono::system_clock::now();
  const auto sign = [&](const tls::Identity& key, const PeerId& subject, const std::string& group,
                        std::chrono::system_clock::time_point expires) {
    return accounts::sign_capability({"mallory", subject, group, expires}, key.key.get());
  };
  const auto holder = c.peer(0).addr;

  {  // a good capability is served
    RawPeer p(holder, mallory);
    const auto reply = p.interested(id, {sign(central, mallory.peer_id(), kGroup, now + std::chrono::minutes(1))});
    CHECK(reply.has_bitfield());
  }
  {  // none
    check_refused(RawPeer(holder, mallory).interested(id, {}), "present a capability");
  }
  {  // forged: signed by another key
    const auto forger = tls::make_identity();
    check_refused(RawPeer(holder, mallory)
                      .interested(id, {sign(forger, mallory.peer_id(), kGroup, now + std::chrono::minutes(1))}),
                  "not signed by the central server");
  }
  {  // forged: a bad signature
    auto capability = sign(central, mallory.peer_id(), kGroup, now + std::chrono::minutes(1));
    std::string signature = capability.signature();
    signature[0] = static_cast<char>(signature[0] ^ 0x40);
    capability.set_signature(signature);
    check_refused(RawPeer(holder, mallory).interested(id, {capability}), "bad signature");
  }
  {  // expired
    check_refused(RawPeer(holder, mallory)
                      .interested(id, {sign(central, mallory.peer_id(), kGroup, now - std::chrono::seconds(1))}),
                  "expired");
  }
  {  // issued to another peer id
    PeerId other = mallory.peer_id();
    other.bytes[3] ^= 1;
    check_refused(
        RawPeer(holder, mallory).interested(id, {sign(central, other, kGroup, now + std::chrono::minutes(1))}),
        "another peer");
  }
  {  // for another group
    check_refused(RawPeer(holder, mallory)
                      .interested(id, {sign(central, mallory.peer_id(), "other", now + std::chrono::minutes(1))}),
                  "another group");
  }
  {  // an open link stops being served when its capability expires
    RawPeer p(holder, mallory);
    const auto expires = std::chrono::system_clock::now() + std::chrono::seconds(2);
    REQUIRE(p.interested(id, {sign(central, mallory.peer_id(), kGroup, expires)}).has_bitfield());
    pb::PeerMessage request;
    request.mutable_request()->set_index(0);
    CHECK(p.send(request).has_piece());
    while (std::chrono::system_clock::now() <= expires + std::chrono::milliseconds(100)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    request.mutable_request()->set_index(1);
    check_refused(p.send(request), "capability expired");
  }
  {  // a real capability replayed by a peer that is not its subject
    // What the central server gives bob's peer (its key, its session)...
    const auto bob = tls::load_or_create_identity(c.peer(1).data_dir, false);
    std::ifstream session(c.peer(1).data_dir / "session");
    std::string user, token_hex;
    REQUIRE(std::getline(session, user));
    REQUIRE(std::getline(session, token_hex));
    RawCentral as_bob(c.central_addr(), &bob);
    pb::CentralRequest reg;
    reg.mutable_register_()->set_listen_port(split(c.peer(1).addr).second);
    REQUIRE(as_bob.ask(reg).has_registered());
    pb::CentralRequest get;
    get.set_session(raw_id(token_hex));
    get.mutable_get_file()->set_file_id(id);
    const auto answer = as_bob.ask(get);
    REQUIRE(answer.has_file());
    REQUIRE(answer.file().capabilities_size() == 1);
    const auto& real = answer.file().capabilities(0);
    // ...is refused from mallory, and served to bob's key.
    check_refused(RawPeer(holder, mallory).interested(id, {real}), "another peer");
    CHECK(RawPeer(holder, bob).interested(id, {real}).has_bitfield());
  }
}

TEST_CASE("accounts: a group's file renamed in a shared folder stays the group's and so after a restart") {
  // f90dff4: the folder's rename path (move_shared) recorded and re-seeded
  // the file without its groups, so the group's file went public.
  Cluster c(3, with_central_http());  // peer0: alice shares the folder; peer1: bob, a member; peer2: carol, not one
  form_team(c);

  // A folder shares what it finds publicly; a group's file gets into one by
  // register-file --group of a file in it, which the watcher takes over
  // (with its groups) when the peer-server starts with --share-dir.
  const fs::path dir = fs::canonical(c.path("."));
  fs::create_directories(dir / "shared" / "sub");
  const fs::path first = dir / "shared" / "plans.bin";
  const fs::path renamed = dir / "shared" / "sub" / "renamed.bin";
  write_random_file(first, 3 * kChunkSize + 11, 21);
  const std::string id = ok(c.on_peer(0, "register-file", {"--path", first.string(), "--group", kGroup})).substr(0, 64);
  REQUIRE(is_file_id(id));
  const auto shared_at = [&](const fs::path& path) {
    const auto j = c.status_json(0);
    if (!j.is_object() || j["folders"].empty()) return false;
    const auto& folder = j["folders"][0];
    if (folder.value("files", 0) != 1 || folder.value("pending", 1) != 0) return false;
    for (const auto& s : j.value("shared", nlohmann::json::array())) {
      if (s.value("file_id", "") == id) return s.value("path", "") == path.string();
    }
    return false;
  };
  const auto restart = [&] {
    REQUIRE(Cluster::stop(c.peer(0)) == 0);
    c.start_peer_with(0, {"--share-dir", (dir / "shared").string()});
  };
  restart();
  REQUIRE(wait_for([&] { return shared_at(first); }));
  const auto announced_to_group = [&] {
    const auto r = c.on_peer(1, "list-files", {"--group", kGroup, "--json"});
    if (r.exit_code != 0) return -1;
    for (const auto& f : nlohmann::json::parse(r.out, nullptr, false)) {
      if (f.value("file_id", "") == id) return f.value("holders", -1);
    }
    return -1;
  };
  REQUIRE(wait_for([&] { return announced_to_group() == 1; }));

  // What only a member sees and gets: the central server's word, and the holder's own.
  const auto group_only = [&](const std::string& when) {
    INFO("when: " << when);
    CHECK_FALSE(listed_publicly(c, id));
    check_fails("anonymous file-info", c.on_central("file-info", {"--file-id", id}), 1, {"unknown file"});
    check_fails("a non-member lists the group", c.on_peer(2, "list-files", {"--group", kGroup}), 1, {"not a member"});
    CHECK(ok(c.on_peer(1, "list-files", {"--group", kGroup})).find(id) != std::string::npos);
    const auto out = c.path("carol-" + when + ".bin");
    check_fails("a non-member requests it", c.on_peer(2, "request-file", {"--file-id", id, "--out", out.string()}), 1,
                {"no file"});
    CHECK_FALSE(fs::exists(out));
    // A peer with no capability, straight to the holder (no central server to ask).
    const auto reply = RawPeer(c.peer(0).addr, tls::make_identity()).interested(raw_id(id), {});
    INFO("the holder answered a peer without a capability: " << reply.DebugString());
    CHECK(reply.has_error());
    CHECK(reply.error().code() == pb::ERROR_UNAUTHORIZED);
  };
  group_only("before");

  fs::rename(first, renamed);
  REQUIRE(wait_for([&] { return shared_at(renamed); }));
  group_only("renamed");
  const auto bob_out = c.path("bob-plans.bin");
  ok(c.on_peer(1, "request-file", {"--file-id", id, "--out", bob_out.string()}));
  CHECK(read_file(bob_out) == read_file(renamed));
  REQUIRE(wait_for([&] { return announced_to_group() == 2; }));  // bob's copy is counted: its announce is done

  // peer.db's record: the restarted peer-server seeds and announces it from
  // there. Checked once the central server has its announcement.
  const std::string http = http_of(c.central());
  const auto announces = [&] { return central_metric(http, "p2pshare_central_announces_total"); };
  const double before_restart = announces();
  REQUIRE(before_restart > 0);
  restart();
  REQUIRE(wait_for([&] { return shared_at(renamed); }));
  REQUIRE(wait_for([&] { return announces() > before_restart; }));
  group_only("restarted");
}

TEST_CASE("accounts: a group's file registered inside a watched folder is not made public by the folder") {
  // The folder's watcher shares what it hashes publicly; a file of that
  // folder already shared with a group must keep its groups.
  Cluster c(3, with_central_http());  // peer0: alice, whose peer-server watches the folder; peer1: bob; peer2: carol
  form_team(c);
  const fs::path dir = fs::canonical(c.path(".")) / "shared";
  fs::create_directories(dir);
  REQUIRE(Cluster::stop(c.peer(0)) == 0);
  c.start_peer_with(0, {"--share-dir", dir.string()});
  const auto folder_done = [&](int files) {
    const auto j = c.status_json(0);
    if (!j.is_object() || j["folders"].empty()) return false;
    return j["folders"][0].value("files", 0) == files && j["folders"][0].value("pending", 1) == 0;
  };
  REQUIRE(wait_for([&] { return folder_done(0); }));
  const std::string http = http_of(c.central());
  const auto announces = [&] { return central_metric(http, "p2pshare_central_announces_total"); };

  // The file is written into the folder and kept open while alice registers
  // it for the group: the watcher looks at a file open for writing only
  // once it is closed, so the registration is first, as when a user
  // registers a file that was already there.
  const fs::path file = dir / "minutes.bin";
  std::string id;
  {
    std::ofstream out(file, std::ios::binary);
    std::string bytes(2 * kChunkSize + 5, '\0');
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919) >> 3);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    id = ok(c.on_peer(0, "register-file", {"--path", file.string(), "--group", kGroup})).substr(0, 64);
    REQUIRE(is_file_id(id));
  }
  const double registered = announces();
  // The watcher hashes it (the same bytes) and shares it: once that is done
  // and the central server has heard again, the file is still the group's.
  REQUIRE(wait_for([&] { return folder_done(1); }));
  REQUIRE(wait_for([&] { return announces() > registered; }));
  CHECK_FALSE(listed_publicly(c, id));
  check_fails("anonymous file-info", c.on_central("file-info", {"--file-id", id}), 1, {"unknown file"});
  const auto carol_out = c.path("carol.bin");
  check_fails("a non-member requests it", c.on_peer(2, "request-file", {"--file-id", id, "--out", carol_out.string()}),
              1, {"no file"});
  CHECK_FALSE(fs::exists(carol_out));
  const auto reply = RawPeer(c.peer(0).addr, tls::make_identity()).interested(raw_id(id), {});
  CHECK(reply.has_error());
  const auto bob_out = c.path("bob.bin");
  ok(c.on_peer(1, "request-file", {"--file-id", id, "--out", bob_out.string()}));
  CHECK(read_file(bob_out) == read_file(file));
}
