# shellcheck shell=bash
# Shared helpers for the baseline benchmark scripts. Source it, don't run it:
#   . "$(dirname "$0")/lib.sh"
#
# Conventions every script follows, so bench/baselines.sh can aggregate them:
#   - results go to stdout as `key=value` lines (one metric per line);
#   - progress and diagnostics go to stderr;
#   - everything talks to 127.0.0.1 only, and every wait is bounded by
#     `timeout` or an explicit deadline;
#   - processes are started through bench_bg so the EXIT trap can kill exactly
#     those PIDs (never anything by name) and remove the scratch directory.

set -euo pipefail

# shellcheck disable=SC2034  # used by the scripts that source this file
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Debian's python3 is the one that has the libtorrent bindings; a pyenv
# `python3` earlier on PATH would not.
BENCH_PY=${BENCH_PY:-/usr/bin/python3}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_PIDS=()
BENCH_TMP=""

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# install_if_missing PKG... : apt-get only what is absent, and run
# `apt-get update` at most once, so re-runs on a provisioned box stay offline.
install_if_missing() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

# bench_tmp : create the per-script scratch dir (once) and arm cleanup.
# BENCH_TMPDIR picks the parent (e.g. /dev/shm to take the disk out of the
# picture); the default follows TMPDIR like mktemp does.
bench_tmp() {
    if [ -z "$BENCH_TMP" ]; then
        BENCH_TMP=$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/p2pbench.XXXXXX")
        trap bench_cleanup EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
    fi
}

bench_cleanup() {
    local rc=$? pid
    # Only signal a PID that is still *our* child: a recorded PID that has
    # exited could since have been reused by an unrelated process.
    for pid in "${BENCH_PIDS[@]}"; do
        [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" = "$$" ] &&
            kill "$pid" 2>/dev/null
    done
    for pid in "${BENCH_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    [ -n "$BENCH_TMP" ] && rm -rf -- "$BENCH_TMP"
    return "$rc"
}

# bench_bg CMD... : start CMD in the background, remember its PID for the
# trap, and leave it in BENCH_LAST_PID.
bench_bg() {
    "$@" &
    BENCH_LAST_PID=$!
    BENCH_PIDS+=("$BENCH_LAST_PID")
}

# bench_run CMD... : run CMD to completion like a foreground command, but
# via bench_bg + wait: bash delays traps until a *foreground* child exits,
# while `wait` is interrupted at once, so a TERM/Ctrl-C cleans up promptly.
bench_run() {
    bench_bg "$@"
    wait "$BENCH_LAST_PID"
}

# parse_size 16M|1G|256MiB|12345 -> bytes (binary multiples, as dd/head do).
parse_size() {
    local s=${1%iB} s2
    s2=${s%B}
    case "$s2" in
        *[kK]) echo $(( ${s2%?} * 1024 )) ;;
        *M)    echo $(( ${s2%?} * 1024 * 1024 )) ;;
        *G)    echo $(( ${s2%?} * 1024 * 1024 * 1024 )) ;;
        *[0-9]) echo $(( s2 )) ;;
        *) die "bad size: $1" ;;
    esac
}

# make_file PATH SIZE : incompressible test data. AES-CTR over zeros with a
# random key is ~10x faster than /dev/urandom and just as useless to a
# compressor; `head -c` on the *input* side avoids SIGPIPE under pipefail.
make_file() {
    local path=$1 bytes key iv
    bytes=$(parse_size "$2")
    key=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    iv=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
    head -c "$bytes" /dev/zero |
        openssl enc -aes-128-ctr -nosalt -K "$key" -iv "$iv" >"$path"
    [ "$(stat -c %s "$path")" -eq "$bytes" ] || die "make_file: short $path"
}

# warm_cache FILE : read it once so every run starts from the page cache and
# we compare transfer code, not the disk.
warm_cache() { cat -- "$1" >/dev/null; }

# median N... : the middle value (mean of the two middle ones if even).
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1}
        END { if (NR == 0) exit 1
              if (NR % 2) printf "%.6f\n", v[(NR+1)/2]
              else printf "%.6f\n", (v[NR/2] + v[NR/2+1]) / 2 }'
}

# now : wall clock with microsecond resolution, no fork.
now() { echo "${EPOCHREALTIME/,/.}"; }

# elapsed T0 [T1] : seconds between two `now` stamps (T1 defaults to now).
elapsed() { awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.6f\n", b - a }'; }

# time_cmd CMD... : run CMD, print its wall time in seconds on stdout. CMD's
# own stdout is discarded so the figure stays parseable (and a terminal
# doesn't slow it down). Fails if CMD does.
time_cmd() {
    local t0 rc=0
    t0=$(now)
    bench_run "$@" >/dev/null || rc=$?
    elapsed "$t0"
    return "$rc"
}

# peak_rss_kib PID : sample VmHWM (the kernel's own high-water mark) until
# the process is gone and print the last value seen, in KiB. VmHWM is
# monotonic, so sampling only risks missing growth in the final ~10 ms.
peak_rss_kib() {
    local pid=$1 hwm=0 v
    while [ -r "/proc/$pid/status" ]; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
        sleep 0.01
    done
    echo "$hwm"
}

# free_port : a TCP port that is free on 127.0.0.1 right now (the kernel's
# choice). Racy in theory, fine on a quiet benchmark box.
free_port() {
    "$BENCH_PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listen PORT [SECS] : until something LISTENs on tcp PORT. Uses ss
# rather than a probe connection, which would eat socat's single accept().
wait_listen() {
    local port=$1 deadline
    deadline=$(( SECONDS + ${2:-10} ))
    until ss -Hltn "sport = :$port" | grep -q .; do
        [ "$SECONDS" -lt "$deadline" ] || die "nothing listening on :$port"
        sleep 0.01
    done
}

# gbps BYTES SECONDS : throughput in GB/s (10^9, as openssl speed reports).
gbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.3f\n", b / s / 1e9 }'; }
