#!/usr/bin/env bash
# Run every baseline (competitors and raw limits of this machine) and report
# them as a Markdown table on stdout plus JSON in bench/results/.
#
# usage: bench/baselines.sh [SIZE]          (default 1G)
#   BENCH_SMALL=1   16M files, 1 run, 2 s of tracker load: a smoke test that
#                   finishes in well under a minute (keeps the scripts from
#                   rotting; used by the test suite)
#   BENCH_RUNS=3    repetitions for the socat/sha timings (median reported)
#   BENCH_SECONDS   tracker load duration (default 10, small 2)
#   BENCH_SWARM_SIZE / BENCH_SWARM_LEECHERS / BENCH_SWARM_LIMIT
#                   capped-seed swarm scenario (default 256M, 4, 16 MiB/s)
#   BENCH_JSON      output file (default bench/results/baselines.json, or
#                   baselines-small.json in small mode so a smoke run never
#                   overwrites real figures)
#   BENCH_TMPDIR    where scratch data goes (default $TMPDIR or /tmp)
# Exit status is non-zero if any baseline failed; the others still report.
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ "${BENCH_SMALL:-0}" = 1 ]; then
    SIZE=16M
    export BENCH_RUNS=1 BENCH_SECONDS=${BENCH_SECONDS:-2}
    SWARM_SIZE=${BENCH_SWARM_SIZE:-16M}
    STEP_LIMIT=120
    JSON=${BENCH_JSON:-$BENCH_DIR/results/baselines-small.json}
else
    SIZE=${1:-1G}
    export BENCH_RUNS BENCH_SECONDS=${BENCH_SECONDS:-10}
    SWARM_SIZE=${BENCH_SWARM_SIZE:-256M}
    STEP_LIMIT=1800
    JSON=${BENCH_JSON:-$BENCH_DIR/results/baselines.json}
fi
SWARM_LEECHERS=${BENCH_SWARM_LEECHERS:-4}
SWARM_LIMIT=${BENCH_SWARM_LIMIT:-16777216}
PY=$BENCH_PY
B=bench   # commands are recorded relative to the repo root

bench_tmp
# Baselines are only comparable on an otherwise idle box: record the load
# around the run (it lands in the JSON) and warn when it isn't idle.
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$LOAD_START" 'BEGIN { exit !(l > 0.5) }'; then
    log "warning: load average is $LOAD_START; other work will skew the figures"
fi
RESULTS=$BENCH_TMP/results.tsv   # name \t status \t seconds \t command \t key=value...
: >"$RESULTS"
failed=0

# step NAME CMD... : run one baseline (bounded), keep its key=value lines.
step() {
    local name=$1 t0 rc=0 out
    shift
    log "== $name: $*"
    out=$BENCH_TMP/$name.out
    t0=$(now)
    (cd "$BENCH_DIR/.." && timeout "$STEP_LIMIT" "$@") >"$out" || rc=$?
    local status=ok
    if [ "$rc" -ne 0 ]; then
        status="failed (exit $rc)"
        failed=1
        log "$name FAILED (exit $rc)"
    fi
    {
        printf '%s\t%s\t%s\t%s\t' "$name" "$status" "$(elapsed "$t0")" "$*"
        grep -E '^[a-z0-9_]+=' "$out" | tr '\n' '\t' || true
        echo
    } >>"$RESULTS"
}

step tcp     "$B/baseline_tcp.sh" "$SIZE"
step sha     "$B/baseline_sha.sh" "$SIZE"
step lt      "$PY" "$B/lt_transfer.py" --size "$SIZE"
step aria2   "$PY" "$B/aria2_transfer.py" --size "$SIZE"
step tracker "$B/opentracker_load.sh"
step swarm   "$PY" "$B/lt_transfer.py" --size "$SWARM_SIZE" \
    --leechers "$SWARM_LEECHERS" --upload-limit "$SWARM_LIMIT"

LOAD_END=$(cut -d' ' -f1 /proc/loadavg)
mkdir -p "$(dirname "$JSON")"
"$PY" - "$RESULTS" "$JSON" "$SIZE" "${BENCH_SMALL:-0}" "$LOAD_START" \
    "$LOAD_END" <<'EOF'
"""Turn the step TSV into JSON (full detail) and a Markdown table (headline
figures only)."""
import datetime
import json
import os
import platform
import sys

tsv, json_path, size, small, load_start, load_end = sys.argv[1:7]


def num(v):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


benches = {}
for line in open(tsv):
    name, status, wall, cmd, *kvs = line.rstrip("\n").split("\t")
    res = dict(kv.split("=", 1) for kv in kvs if "=" in kv)
    benches[name] = {"ok": status == "ok", "status": status,
                     "command": cmd, "wall_seconds": float(wall),
                     "results": {k: num(v) for k, v in res.items()}}

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), platform.processor())
doc = {
    "generated": datetime.datetime.now(datetime.timezone.utc)
    .isoformat(timespec="seconds"),
    "mode": "small" if small == "1" else "full",
    "size": size,
    "runs": int(os.environ.get("BENCH_RUNS", "3")),
    "host": {"cpus": os.cpu_count(), "cpu": cpu,
             "kernel": platform.release(),
             "mem_kib": int(next(l.split()[1] for l in open("/proc/meminfo")
                                 if l.startswith("MemTotal:"))),
             "loadavg_start": float(load_start),
             "loadavg_end": float(load_end)},
    "benchmarks": benches,
}
tmp = json_path + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f, indent=2, sort_keys=True)
    f.write("\n")
os.replace(tmp, json_path)


def r(name, key):
    return benches.get(name, {}).get("results", {}).get(key)


def fmt(template, name, *keys):
    vals = [r(name, k) for k in keys]
    if None in vals:
        return "n/a"
    return template % tuple(vals)


MiB = 1 << 20
rows = [
    ("tcp", "raw TCP, socat -> new file",
     fmt("%.3f s (%.2f GB/s)", "tcp", "tcp_seconds", "tcp_gbps")),
    ("tcp", "raw TCP, socat -> /dev/null",
     fmt("%.3f s (%.2f GB/s)", "tcp", "tcp_devnull_seconds",
         "tcp_devnull_gbps")),
    ("sha", "SHA-256, openssl dgst",
     fmt("%.3f s (%.2f GB/s)", "sha", "sha_openssl_seconds",
         "sha_openssl_gbps")),
    ("sha", "SHA-256, sha256sum",
     fmt("%.3f s (%.2f GB/s)", "sha", "sha_sha256sum_seconds",
         "sha_sha256sum_gbps")),
    ("lt", "libtorrent -> libtorrent",
     fmt("%.3f s, leecher peak RSS %d KiB", "lt", "lt_seconds",
         "lt_leecher_peak_rss_kib")),
    ("aria2", "libtorrent -> aria2c",
     fmt("%.3f s (exit %.3f s), aria2c peak RSS %d KiB", "aria2",
         "aria2_seconds", "aria2_exit_seconds", "aria2_peak_rss_kib")),
    ("tracker", "opentracker HTTP announces (wrk)",
     fmt("%d req/s, p50 %.2f ms, p99 %.2f ms", "tracker", "ot_rps",
         "ot_p50_ms", "ot_p99_ms")),
]
sw = benches.get("swarm", {}).get("results", {})
if sw:
    label = "libtorrent swarm: seed capped %g MiB/s, %d leechers, %s" % (
        sw.get("lt_upload_limit", 0) / MiB, sw.get("lt_leechers", 0),
        "%d MiB" % (sw.get("lt_bytes", 0) // MiB))
else:
    label = "libtorrent swarm, capped seed"
rows.append(("swarm", label,
             fmt("%.3f s until all done, seed uploaded %s copies", "swarm",
                 "lt_seconds", "lt_seed_upload_copies")))

print("## Baselines (%s, %s mode, %s CPUs)\n"
      % (size, doc["mode"], doc["host"]["cpus"]))
print("| Baseline | Result | Command |")
print("| --- | --- | --- |")
for name, label, value in rows:
    b = benches.get(name)
    if b and not b["ok"]:
        value = "**%s**" % b["status"]
    cmd = b["command"] if b else ""
    print("| %s | %s | `%s` |" % (label, value, cmd))
print("\nJSON: %s" % json_path)
EOF
exit "$failed"
