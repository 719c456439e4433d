#!/usr/bin/env bash
# Tracker ceiling: HTTP announces/s and latency of opentracker (the reference
# C tracker) on loopback, driven by wrk with a fresh TCP connection per
# announce, from 1000 peers over 100 torrents (opentracker_announce.lua).
#
# usage: bench/opentracker_load.sh
#   env: BENCH_SECONDS=10 (load duration), BENCH_CONNECTIONS=32,
#        BENCH_THREADS=2 (wrk), BENCH_FILES=100, BENCH_PEERS=1000
# stdout: ot_requests ot_seconds ot_rps ot_p50_ms ot_p99_ms ot_max_ms
#         ot_errors_* (see below for why ot_errors_read ~= ot_requests)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
FILES=${BENCH_FILES:-100}
PEERS=${BENCH_PEERS:-1000}

install_if_missing opentracker wrk iproute2
bench_tmp
# opentracker chroots into -d and drops to `nobody`, so the whitelist must
# live inside that dir (named relative to it) and be world-readable.
chmod 755 "$BENCH_TMP"

# Debian builds opentracker with a whitelist: unknown info-hashes are
# refused, which would make us measure the refusal path. Whitelist exactly
# the torrents the Lua script announces (same naming scheme).
for i in $(seq 0 $(( FILES - 1 ))); do
    printf 'p2pbench-file-%06d' "$i" | od -An -tx1 | tr -d ' \n'
    echo
done >"$BENCH_TMP/whitelist"
chmod 644 "$BENCH_TMP/whitelist"

port=$(free_port)
uport=$(free_port)   # UDP tracker port; unused, but it binds one regardless
bench_bg timeout $(( SECS + 60 )) opentracker -i 127.0.0.1 -p "$port" \
    -P "$uport" -d "$BENCH_TMP" -w /whitelist 2>"$BENCH_TMP/opentracker.log"
wait_listen "$port"

# Sanity check before loading it: a whitelisted announce must get peers, not
# a "failure reason" (bash's /dev/tcp keeps this free of extra tools).
# opentracker loads the whitelist in a background thread after it starts
# listening, so the first announces can still be refused as "not
# authorized": ask again, for up to 10 s, before calling it a failure.
deadline=$(( SECONDS + 10 ))
while :; do
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET /announce?info_hash=p2pbench-file-000000&peer_id=-BN0001-999999999999&port=9&left=0&compact=1 HTTP/1.0\r\n\r\n' >&3
    reply=$(timeout 5 cat <&3 | tr -d '\0' || true)
    exec 3<&-
    case "$reply" in
        *complete*) break ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || die "opentracker refused the announce: ${reply:0:200}"
    sleep 0.1
done

log "wrk: ${SECS}s, $THREADS threads, $CONNS connections, $FILES torrents x $PEERS peers"
# opentracker closes the connection after every reply and doesn't say so in
# a header, so wrk finds out on its next read: ot_errors_read counts one per
# request and is expected; the other error counters should stay at 0.
bench_run timeout $(( SECS + 30 )) wrk -t"$THREADS" -c"$CONNS" -d"${SECS}s" --timeout 2s \
    --latency -s "$BENCH_DIR/opentracker_announce.lua" \
    "http://127.0.0.1:$port" -- "$FILES" "$PEERS" >"$BENCH_TMP/wrk.out"
grep -v '^ot_' "$BENCH_TMP/wrk.out" >&2 || true
grep '^ot_' "$BENCH_TMP/wrk.out"
echo "ot_connections=$CONNS"
