#include "p2pshare/dashboard.hpp"

#include <string>

namespace p2pshare::dashboard {
namespace {

// Shared by both pages: the look and the helpers that build rows from text.
constexpr const char* kHead = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 .3em} h2{font-size:16px;margin:1.2em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:middle}
th{background:#eee} .num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e3e3e3;height:12px;width:160px;display:inline-block;vertical-align:middle}
.bar>span{display:block;height:12px;background:#3a7}
.muted{color:#777} .id{font-family:monospace;font-size:12px}
.chunks{display:flex;flex-wrap:wrap;gap:1px;max-width:640px;margin-bottom:2px}
.chunks>span{width:8px;height:14px;display:inline-block}
#status{margin-bottom:.5em}
</style>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
function api(path) {
  const sep = path.includes("?") ? "&" : "?";
  return fetch(path + (token ? sep + "token=" + encodeURIComponent(token) : ""), {cache: "no-store"})
      .then(r => { if (!r.ok) throw new Error(r.status + " " + r.statusText); return r.json(); });
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; ++i; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
// Every cell is text: names from the network never become markup.
function cell(row, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.appendChild(value); else td.textContent = String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function bar(fraction) {
  const outer = document.createElement("span");
  outer.className = "bar";
  const inner = document.createElement("span");
  inner.style.width = Math.round(Math.max(0, Math.min(1, fraction)) * 100) + "%";
  outer.appendChild(inner);
  return outer;
}
function fill(id, rows, columns, empty) {
  const body = document.getElementById(id);
  body.replaceChildren();
  if (!rows.length) { const tr = body.insertRow(); cell(tr, empty, "muted").colSpan = columns; }
  return body;
}
</script>
)HTML";

constexpr const char* kPeerBody = R"HTML(<title>p2pshare peer</title></head><body>
<h1>p2pshare peer</h1>
<div id="status" class="muted">connecting...</div>
<h2>Downloads</h2>
<table><thead><tr><th>Name</th><th>Progress</th><th class="num">Have</th><th class="num">Size</th>
<th class="num">Rate</th><th class="num">Peers</th><th>State</th></tr></thead><tbody id="downloads"></tbody></table>
<h2>Transfer rate</h2>
<canvas id="graph" width="640" height="120" style="background:#fff;border:1px solid #ddd"></canvas>
<div class="muted">down <span style="color:#37a">&#9632;</span> up <span style="color:#d73">&#9632;</span>, last 60 s</div>
<h2>Shared files</h2>
<table><thead><tr><th>Name</th><th class="num">Size</th><th class="num">Uploaded</th><th>File id</th></tr></thead>
<tbody id="shared"></tbody></table>
<h2>Links</h2>
<table><thead><tr><th>Peer</th><th>File</th><th class="num">Received</th><th class="num">Sent</th></tr></thead>
<tbody id="links"></tbody></table>
<script>
const history = [];
let previous = null;
const lastHave = {};
function draw() {
  const canvas = document.getElementById("graph"), g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...history.map(h => Math.max(h.down, h.up)));
  for (const [key, colour] of [["down", "#37a"], ["up", "#d73"]]) {
    g.strokeStyle = colour; g.lineWidth = 2; g.beginPath();
    history.forEach((h, i) => {
      const x = canvas.width - (history.length - 1 - i) * canvas.width / 59;
      const y = canvas.height - 4 - h[key] / top * (canvas.height - 8);
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
  g.fillStyle = "#555"; g.fillText(bytes(top) + "/s", 4, 12);
}
function render(s) {
  const now = performance.now();
  document.getElementById("status").textContent = "peer " + s.peer_id.slice(0, 16) + "\u2026 on " + s.listen_addr +
      (s.central_connected ? ", registered with the central server " : ", not registered with the central server ") +
      s.central_addr + (s.cache_limit > 0 ? ", cache " + bytes(s.cache_used) + " of " + bytes(s.cache_limit) : "");
  if (previous) {
    const seconds = Math.max(0.001, (now - previous.at) / 1000);
    history.push({down: Math.max(0, s.bytes_down - previous.down) / seconds, up: Math.max(0, s.bytes_up - previous.up) / seconds});
    if (history.length > 60) history.shift();
  }
  previous = {at: now, down: s.bytes_down, up: s.bytes_up};
  draw();
  let body = fill("downloads", s.downloads, 7, "no downloads");
  for (const d of s.downloads) {
    const tr = body.insertRow();
    tr.dataset.fileId = d.file_id;
    const before = lastHave[d.file_id];
    const rate = before ? Math.max(0, d.have_bytes - before.have) / Math.max(0.001, (now - before.at) / 1000) : 0;
    lastHave[d.file_id] = {have: d.have_bytes, at: now};
    cell(tr, d.name);
    const progress = cell(tr, bar(d.size ? d.have_bytes / d.size : 1));
    progress.appendChild(document.createTextNode(" " + (d.size ? Math.floor(d.have_bytes * 100 / d.size) : 100) + "%"));
    progress.className = "progress";
    cell(tr, bytes(d.have_bytes), "num have");
    cell(tr, bytes(d.size), "num");
    cell(tr, bytes(rate) + "/s", "num");
    cell(tr, d.links.length, "num");
    cell(tr, d.state, "state");
  }
  body = fill("shared", s.shared, 4, "nothing shared");
  for (const f of s.shared) {
    const tr = body.insertRow();
    tr.dataset.fileId = f.file_id;
    cell(tr, f.name, "name"); cell(tr, bytes(f.size), "num"); cell(tr, bytes(f.uploaded), "num"); cell(tr, f.file_id, "id");
  }
  const links = [];
  for (const f of s.shared.concat(s.downloads)) for (const l of f.links) links.push([l, f.name]);
  body = fill("links", links, 4, "no links");
  for (const [l, name] of links) {
    const tr = body.insertRow();
    cell(tr, l.peer_id.slice(0, 16) + "\u2026", "id"); cell(tr, name);
    cell(tr, bytes(l.downloaded), "num"); cell(tr, bytes(l.uploaded), "num");
  }
}
function poll() {
  api("/api/status").then(render).catch(e => {
    document.getElementById("status").textContent = "cannot reach the peer: " + e.message;
  }).finally(() => setTimeout(poll, 1000));
}
poll();
</script></body></html>
)HTML";

constexpr const char* kCentralBody = R"HTML(<title>p2pshare central server</title></head><body>
<h1>p2pshare central server</h1>
<div id="status" class="muted">connecting...</div>
<h2>Files</h2>
<table><thead><tr><th>Name</th><th class="num">Size</th><th class="num">Live holders</th><th>Holders</th>
<th>Copies per chunk</th><th>File id</th></tr></thead><tbody id="files"></tbody></table>
<h2>Live peers</h2>
<table><thead><tr><th>Peer</th><th>Address</th><th>Last seen</th></tr></thead><tbody id="peers"></tbody></table>
<script>
function colour(copies, most) {
  if (!copies) return "#d33";
  const light = 75 - Math.round(40 * copies / Math.max(1, most));
  return "hsl(140,55%," + light + "%)";
}
function chunks(info) {
  const box = document.createElement("span");
  box.className = "chunks";
  const shown = info.chunk_copies.slice(0, 512);
  const most = Math.max(1, ...shown);
  shown.forEach((copies, i) => {
    const s = document.createElement("span");
    s.style.background = colour(copies, most);
    s.title = "chunk " + i + ": " + copies + " live " + (copies === 1 ? "copy" : "copies");
    box.appendChild(s);
  });
  const min = info.chunk_copies.length ? Math.min(...info.chunk_copies) : 0;
  const wrap = document.createElement("span");
  wrap.appendChild(box);
  wrap.appendChild(document.createTextNode("fewest copies: " + min));
  return wrap;
}
async function refresh() {
  const [files, peers] = await Promise.all([api("/api/files"), api("/api/peers")]);
  document.getElementById("status").textContent = files.files.length + " files, " + peers.peers.length + " live peers";
  const infos = await Promise.all(files.files.slice(0, 50).map(f => api("/api/files/" + f.file_id)));
  let body = fill("files", files.files, 6, "no files");
  files.files.forEach((f, i) => {
    const info = infos[i];
    const tr = body.insertRow();
    tr.dataset.fileId = f.file_id;
    cell(tr, f.name, "name"); cell(tr, bytes(f.size), "num"); cell(tr, f.live_holders, "num holders");
    cell(tr, info ? info.holders.map(h => h.host + ":" + h.port + (h.complete ? "" : " (partial)")).join(", ") : "", "holder-list");
    cell(tr, info ? chunks(info) : "");
    cell(tr, f.file_id, "id");
  });
  body = fill("peers", peers.peers, 3, "no live peers");
  for (const p of peers.peers) {
    const tr = body.insertRow();
    cell(tr, p.peer_id.slice(0, 16) + "\u2026", "id"); cell(tr, p.host + ":" + p.port);
    cell(tr, new Date(p.last_seen_ms).toLocaleTimeString());
  }
}
function poll() {
  refresh().catch(e => {
    document.getElementById("status").textContent = "cannot reach the central server: " + e.message;
  }).finally(() => setTimeout(poll, 2000));
}
poll();
</script></body></html>
)HTML";

http::Response page(const char* body) {
  http::Response response;
  response.content_type = "text/html; charset=utf-8";
  response.body = std::string(kHead) + body;
  return response;
}

}  // namespace

http::Response peer_page() {
  return page(kPeerBody);
}

http::Response central_page() {
  return page(kCentralBody);
}

}  // namespace p2pshare::dashboard
