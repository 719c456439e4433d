// The dashboards served at / by both servers: one self-contained page each
// (HTML, CSS and a little JavaScript embedded in the binary; nothing is
// fetched from another host). The page polls the server's JSON API and
// writes every value with textContent, never as markup, so a name from the
// network (`<script>alert(1)</script>.txt`) shows as text.
#pragma once

#include "p2pshare/http.hpp"

namespace p2pshare::dashboard {

// Polls /api/status every second with the page's own ?token=.
http::Response peer_page();
// Polls /api/files, /api/peers and /api/files/ID (the chunk copies).
http::Response central_page();

}  // namespace p2pshare::dashboard
