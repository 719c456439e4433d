-- wrk script for bench/opentracker_load.sh: HTTP announces from PEERS
-- distinct peers over FILES distinct torrents (args: FILES PEERS), the shape
-- of a busy tracker rather than one peer hammering one swarm.
--
-- Names are fixed-width ASCII so they need no URL-encoding and the shell
-- side can whitelist them: info_hash = "p2pbench-file-%06d" (20 bytes),
-- peer_id = "-BN0001-%012d" (20 bytes). Every peer is 127.0.0.1, so the
-- tracker tells peers apart by port: peer p announces port 10000 + p.

local files, peers = 100, 1000
local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   files = tonumber(args[1]) or files
   peers = tonumber(args[2]) or peers
   -- distinct but reproducible request streams per thread
   math.randomseed(1000 + (tid or 0))
end

function request()
   local f = math.random(0, files - 1)
   local p = math.random(0, peers - 1)
   -- even peers are seeds, odd ones leechers: both code paths get load
   local left = (p % 2 == 0) and 0 or 1048576
   local path = string.format(
      "/announce?info_hash=p2pbench-file-%06d&peer_id=-BN0001-%012d" ..
      "&port=%d&uploaded=0&downloaded=0&left=%d&compact=1&numwant=50",
      f, p, 10000 + p, left)
   -- opentracker closes after every reply anyway; saying so makes the
   -- intent explicit (a fresh TCP connection per announce, as real clients
   -- do) instead of relying on that.
   return wrk.format("GET", path, { ["Connection"] = "close" })
end

function done(summary, latency, requests)
   local e = summary.errors
   local secs = summary.duration / 1e6
   io.write(string.format("ot_requests=%d\n", summary.requests))
   io.write(string.format("ot_seconds=%.3f\n", secs))
   io.write(string.format("ot_rps=%.0f\n", summary.requests / secs))
   io.write(string.format("ot_p50_ms=%.3f\n", latency:percentile(50) / 1000))
   io.write(string.format("ot_p99_ms=%.3f\n", latency:percentile(99) / 1000))
   io.write(string.format("ot_max_ms=%.3f\n", latency.max / 1000))
   io.write(string.format("ot_errors_connect=%d\n", e.connect))
   io.write(string.format("ot_errors_read=%d\n", e.read))
   io.write(string.format("ot_errors_write=%d\n", e.write))
   io.write(string.format("ot_errors_status=%d\n", e.status))
   io.write(string.format("ot_errors_timeout=%d\n", e.timeout))
end
