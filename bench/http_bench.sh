#!/usr/bin/env bash
# The HTTP side's figures (issue 12), on loopback:
#   1. the gateway's rate for one file (default 1 GiB) fetched with curl from
#      a peer-server that does not have it (curl -o /dev/null), against
#      request-file of the same file to another fresh peer, in the same run,
#      interleaved run by run;
#   2. the cost of scraping /metrics every second during a transfer: the
#      transfer with and without a 1 Hz scrape of both peers, interleaved,
#      plus the server time of one scrape (200 back to back), and the
#      server's own CPU for one scrape (utime+stime of the seed over 1,000
#      scrapes by one curl), which the load of a shared machine does not blur.
# Usage: bench/http_bench.sh [BINARY] [SIZE]   (defaults build/release/p2pshare, 1G)
# Prints key=value lines on stdout; progress on stderr.
. "$(dirname "$0")/lib.sh"

BIN=$(realpath "${1:-build/release/p2pshare}")
SIZE=${2:-1G}
[ -x "$BIN" ] || die "no binary at $BIN"
command -v curl >/dev/null || die "curl is needed"
bench_tmp
cd "$BENCH_TMP"

# wait_line FILE PREFIX : the rest of the first line of FILE starting with PREFIX (20 s at most).
wait_line() {
    local i
    for i in $(seq 200); do
        if grep -q "^$2" "$1" 2>/dev/null; then grep "^$2" "$1" | head -1 | cut -c$((${#2} + 1))-; return; fi
        sleep 0.1
    done
    die "no '$2' in $1"
}

bench_bg "$BIN" central-server --addr 127.0.0.1:0 --data-dir central --heartbeat-interval 500 >central.out 2>central.err
CENTRAL=$(wait_line central.out "listening on ")

# start_peer NAME : a peer-server with an HTTP side; sets ADDR, HTTP and PEER_PID.
# Each is stopped once used (stop_peer), so runs do not pile up servers.
start_peer() {
    bench_bg "$BIN" peer-server --central-server-addr "$CENTRAL" --addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        --data-dir "$1" --download-dir "$1/downloads" --holder-refresh 200 >"$1.out" 2>"$1.err"
    PEER_PID=$BENCH_LAST_PID
    ADDR=$(wait_line "$1.out" "listening on ")
    HTTP=$(wait_line "$1.out" "http on ")
}
token() { cat "$1/control.cookie"; }
stop_peer() { kill "$PEER_PID" && wait "$PEER_PID" 2>/dev/null || true; }

log "making a $SIZE file"
make_file data.bin "$SIZE"
warm_cache data.bin
start_peer seed
SEED_ADDR=$ADDR SEED_HTTP=$HTTP SEED_PID=$PEER_PID
ID=$("$BIN" register-file --peer-addr "$SEED_ADDR" --data-dir seed --path "$PWD/data.bin")
BYTES=$(stat -c %s data.bin)

gateway_times=() request_times=() plain_times=() scraped_times=()
for run in $(seq "$BENCH_RUNS"); do
    # request-file to a fresh peer
    start_peer "r$run"
    t0=$(date +%s.%N)
    "$BIN" request-file --peer-addr "$ADDR" --data-dir "r$run" --file-id "$ID" --out "$PWD/r$run.out" >/dev/null
    request_times+=("$(echo "$(date +%s.%N) - $t0" | bc)")
    cmp -s data.bin "r$run.out" || die "request-file copy differs"
    rm -f "r$run.out" "r$run/downloads/"*
    stop_peer
    # the gateway of another fresh peer, read by curl
    start_peer "g$run"
    t0=$(date +%s.%N)
    # To /dev/null: the peer writes its own copy to disk as request-file's
    # peer does; a second copy on disk would measure the disk, not the
    # gateway. The bytes are checked against the peer's copy instead, and
    # the e2e tests check what the gateway sends.
    got=$(curl -sf -H "Authorization: Bearer $(token "g$run")" -o /dev/null -w '%{size_download}' "http://$HTTP/files/$ID")
    gateway_times+=("$(echo "$(date +%s.%N) - $t0" | bc)")
    [ "$got" = "$(stat -c %s data.bin)" ] || die "gateway sent $got bytes"
    cmp -s data.bin "g$run/downloads/data.bin" || die "gateway peer's copy differs"
    rm -f "g$run/downloads/"*
    stop_peer
    log "run $run: request-file ${request_times[-1]} s, gateway ${gateway_times[-1]} s"

    # the same transfer without and with /metrics scraped every second on both ends
    for mode in plain scraped; do
        start_peer "$mode$run"
        scraper=""
        if [ "$mode" = scraped ]; then
            tok=$(token "$mode$run") seed_tok=$(token seed) here=$HTTP
            bench_bg bash -c "while :; do curl -sf -H 'Authorization: Bearer $tok' http://$here/metrics >/dev/null;
                curl -sf -H 'Authorization: Bearer $seed_tok' http://$SEED_HTTP/metrics >/dev/null; sleep 1; done"
            scraper=$BENCH_LAST_PID
        fi
        t0=$(date +%s.%N)
        "$BIN" request-file --peer-addr "$ADDR" --data-dir "$mode$run" --file-id "$ID" --out "$PWD/$mode$run.out" >/dev/null
        elapsed=$(echo "$(date +%s.%N) - $t0" | bc)
        [ -n "$scraper" ] && kill "$scraper" && wait "$scraper" 2>/dev/null || true
        if [ "$mode" = plain ]; then plain_times+=("$elapsed"); else scraped_times+=("$elapsed"); fi
        rm -f "$mode$run.out" "$mode$run/downloads/"*
        stop_peer
    done
    log "run $run: transfer ${plain_times[-1]} s plain, ${scraped_times[-1]} s scraped every second"
done

# One scrape's cost: 200 back to back against the seed (curl's own time included).
t0=$(date +%s.%N)
for i in $(seq 200); do curl -sf -H "Authorization: Bearer $(token seed)" "http://$SEED_HTTP/metrics" >/dev/null; done
scrape_ms=$(echo "($(date +%s.%N) - $t0) * 1000 / 200" | bc -l)

# The seed's CPU for 1,000 scrapes, from /proc (clock ticks of utime+stime):
# one curl, URL globbing, a new connection each (the server answers one
# request per connection).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks0=$(cpu_ticks "$SEED_PID")
curl -sf -H "Authorization: Bearer $(token seed)" "http://$SEED_HTTP/metrics?n=[1-1000]" >/dev/null ||
    die "scraping 1,000 times failed"
ticks1=$(cpu_ticks "$SEED_PID")
scrape_cpu_ms=$(echo "($ticks1 - $ticks0) * 1000 / $(getconf CLK_TCK) / 1000" | bc -l)

req=$(median "${request_times[@]}") gw=$(median "${gateway_times[@]}")
plain=$(median "${plain_times[@]}") scraped=$(median "${scraped_times[@]}")
echo "bytes=$BYTES"
echo "runs=$BENCH_RUNS"
echo "request_file_seconds=$req"
echo "gateway_seconds=$gw"
echo "gateway_vs_request_file_rate=$(echo "$req / $gw" | bc -l | cut -c1-5)"
echo "transfer_plain_seconds=$plain"
echo "transfer_scraped_seconds=$scraped"
echo "scrape_slowdown_percent=$(echo "($scraped - $plain) * 100 / $plain" | bc -l | cut -c1-6)"
echo "one_scrape_ms_including_curl=$(printf '%.3f' "$scrape_ms")"
echo "one_scrape_server_cpu_ms=$(printf '%.4f' "$scrape_cpu_ms")"
# Scraped once a second, the share of one core the peer spends on it.
echo "scrape_1hz_cpu_percent_of_a_core=$(printf '%.4f' "$(echo "$scrape_cpu_ms / 10" | bc -l)")"
echo "load_average=$(cut -d' ' -f1 /proc/loadavg)"
