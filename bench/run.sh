#!/usr/bin/env bash
# Runs every baseline (bench/baselines.sh) and every p2pshare goal
# (bench/p2pshare_bench.py) in one go, then writes the report:
# docs/benchmarks.md, or bench/results/benchmarks-small.md in small mode.
#
# usage: bench/run.sh
#   BENCH_SMALL=1   small sizes (16 MiB files, 1 run, 2 s of load, 100 peers):
#                   a smoke test in well under 2 minutes; the test suite runs
#                   it so the scripts never rot. Exit 0 when everything ran,
#                   whether or not the goals were met; a crash, a hang or a
#                   wrong byte is a failure.
#   BENCH_RUNS=3    runs per median
#   BENCH_TMPDIR    scratch parent (default $TMPDIR or /tmp); needs ~10 GiB
#                   free in full mode (goal 5 moves a 4 GiB file)
#   P2PSHARE_BIN, P2PSHARE_LOAD_BIN   the binaries (default build/release/...);
#                   built with the release preset when missing, or always
#                   with BENCH_BUILD=1
#   BENCH_SOURCE    what the report names as the source of the binaries
#                   (default: the checkout's git commit)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$BENCH_DIR/.." && pwd)
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
# The source is what the tree was when the run started (the report is
# written at the end, when the tree may have moved on).
if [ -z "${BENCH_SOURCE:-}" ]; then
    BENCH_SOURCE=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
        BENCH_SOURCE="$BENCH_SOURCE (with uncommitted changes)"
    fi
fi
export BENCH_SOURCE
BIN=${P2PSHARE_BIN:-$ROOT/build/release/p2pshare}
LOAD_BIN=${P2PSHARE_LOAD_BIN:-$ROOT/build/release/bench/p2pshare_central_load}
PY=$BENCH_PY

if [ "${BENCH_SMALL:-0}" = 1 ]; then
    BL_JSON=$BENCH_DIR/results/baselines-small.json
    P_JSON=$BENCH_DIR/results/p2pshare-small.json
    DOC=$BENCH_DIR/results/benchmarks-small.md
    P_ARGS=(--small)
    LIMIT=600
    CMD="BENCH_SMALL=1 bench/run.sh"
else
    BL_JSON=$BENCH_DIR/results/baselines.json
    P_JSON=$BENCH_DIR/results/p2pshare.json
    DOC=$ROOT/docs/benchmarks.md
    P_ARGS=()
    LIMIT=7200
    CMD="bench/run.sh"
fi

if [ ! -x "$BIN" ] || [ ! -x "$LOAD_BIN" ] || [ "${BENCH_BUILD:-0}" = 1 ]; then
    log "building p2pshare and p2pshare_central_load (release preset)"
    (cd "$ROOT" && cmake --preset release >/dev/null &&
        cmake --build --preset release --target p2pshare p2pshare_central_load) >&2
fi

bench_tmp
mkdir -p "$BENCH_DIR/results"
if awk -v l="$LOAD_START" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average is $LOAD_START at start; the report will say so"
fi
rc=0

log "== baselines"
BENCH_JSON=$BL_JSON bench_run timeout "$LIMIT" bash "$BENCH_DIR/baselines.sh" || {
    log "some baseline failed (see above); the report marks it"
    rc=1
}

log "== p2pshare goals"
bench_run timeout "$LIMIT" "$PY" "$BENCH_DIR/p2pshare_bench.py" "${P_ARGS[@]}" \
    --baselines "$BL_JSON" --out "$P_JSON" --bin "$BIN" --load-bin "$LOAD_BIN" || {
    log "p2pshare goals: something failed (see above)"
    rc=1
}

mkdir -p "$(dirname "$DOC")"
"$PY" "$BENCH_DIR/report.py" --baselines "$BL_JSON" --p2pshare "$P_JSON" --command "$CMD" \
    --load-start "$LOAD_START" >"$BENCH_TMP/report.md"
mv -- "$BENCH_TMP/report.md" "$DOC"
log "report: $DOC"
exit "$rc"
