#!/usr/bin/env bash
# Raw TCP ceiling: copy a file through one loopback TCP connection with socat
# (file -> socket -> file). No protocol, no hashing: anything p2pshare does
# on top of this costs time relative to this number.
#
# usage: bench/baseline_tcp.sh [SIZE]        (default 1G; env BENCH_RUNS=3,
#        BENCH_SOCAT_BUF=131072)
# stdout: tcp_bytes, tcp_seconds (median, into a new file), tcp_gbps,
#         tcp_devnull_seconds, tcp_devnull_gbps (socket only), tcp_runs
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE=${1:-1G}
BYTES=$(parse_size "$SIZE")
# Generous per-run bound: loopback copies run at GB/s, so this only fires
# if something hangs.
LIMIT=$(( 30 + BYTES / 50000000 ))
# socat's 8 KiB default buffer makes this a syscall benchmark (~2x slower on
# loopback); 128 KiB is what any bulk-transfer code would use.
BUF=${BENCH_SOCAT_BUF:-131072}

install_if_missing socat openssl iproute2
bench_tmp
SRC=$BENCH_TMP/src
DST=$BENCH_TMP/dst
log "creating $SIZE test file"
make_file "$SRC" "$SIZE"
warm_cache "$SRC"

# one_copy SINK : one timed loopback copy of $SRC into SINK; seconds in T.
# The clock stops when the *receiver* exits, i.e. when the last byte is in
# SINK, not when the sender has merely filled the socket buffers. (T is a
# global, not $(...) output: a command substitution would hide the
# receiver's PID from the cleanup trap and hold off Ctrl-C until it ends.)
one_copy() {
    local sink=$1 port rx t0
    port=$(free_port)
    bench_bg timeout "$LIMIT" socat -b "$BUF" -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" \
        "OPEN:$sink,creat,trunc"
    rx=$BENCH_LAST_PID
    wait_listen "$port"
    t0=$(now)
    bench_run timeout "$LIMIT" socat -b "$BUF" -u "OPEN:$SRC" "TCP:127.0.0.1:$port"
    wait "$rx" || die "receiver failed"
    T=$(elapsed "$t0")
}

# Two sinks: a fresh file is the real job (and pays the kernel's page
# allocation for the new page-cache pages, which is expensive on VMs with
# free-page reporting); /dev/null isolates the socket path itself.
file_t=() null_t=()
for run in $(seq 1 "$BENCH_RUNS"); do
    rm -f "$DST"
    one_copy "$DST"
    file_t+=("$T")
    [ "$(stat -c %s "$DST")" -eq "$BYTES" ] || die "size mismatch"
    one_copy /dev/null
    null_t+=("$T")
    log "run $run: file ${file_t[-1]}s, /dev/null ${null_t[-1]}s"
done
# Full compare once, outside the timed section: a fast wrong copy is no copy.
cmp -s "$SRC" "$DST" || die "content mismatch"

t=$(median "${file_t[@]}")
tn=$(median "${null_t[@]}")
echo "tcp_bytes=$BYTES"
echo "tcp_seconds=$t"
echo "tcp_gbps=$(gbps "$BYTES" "$t")"
echo "tcp_devnull_seconds=$tn"
echo "tcp_devnull_gbps=$(gbps "$BYTES" "$tn")"
echo "tcp_runs=$BENCH_RUNS"
