#!/usr/bin/env bash
# Builds the libFuzzer targets (the "fuzz" preset) and runs each for a while.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     (from any directory)
#
# SECONDS per target, default 30; TARGETs default to all. Each target runs on
# a copy of its seed corpus in a scratch dir, so runs do not grow the repo.
# A crash's input is kept in build/fuzz/fuzz-artifacts/<target>/ and the
# target's log tail is printed. Exit status: 0 if no target crashed, 1 if
# any did, 2 on a build or usage problem.
set -euo pipefail

seconds=${1:-30}
[[ $# -gt 0 ]] && shift
if ! [[ $seconds =~ ^[0-9]+$ ]] || [[ $seconds -eq 0 ]]; then
  echo "usage: $0 [SECONDS] [TARGET...]" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fuzz_dir=$root/tests/fuzz
build_dir=$root/build/fuzz
all_targets=(fuzz_frame_decoder fuzz_manifest fuzz_sanitize_name fuzz_central_server fuzz_peer_server fuzz_handoff fuzz_http_request fuzz_capability)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all_targets[@]}")
for target in "${targets[@]}"; do
  if [[ " ${all_targets[*]} " != *" $target "* ]]; then
    echo "no such fuzz target: $target (have: ${all_targets[*]})" >&2
    exit 2
  fi
done

cd "$root"
if ! { cmake --preset fuzz >/dev/null && cmake --build --preset fuzz -j2; }; then
  echo "fuzz build failed" >&2
  exit 2
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/p2pshare-fuzz-run.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# One target: its result line in $scratch/<target>/summary, its log tail
# on stderr if it failed; exit status 0 if it ran and found nothing.
run_target() {
  local target=$1
  local binary=$build_dir/tests/fuzz/$target
  local corpus=$scratch/$target/corpus
  local artifacts=$build_dir/fuzz-artifacts/$target
  mkdir -p "$corpus" "$artifacts" "$scratch/$target/tmp"
  if [[ -d $fuzz_dir/corpus/$target ]]; then
    cp -r "$fuzz_dir/corpus/$target/." "$corpus/"
  fi
  local flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
               -artifact_prefix="$artifacts/")
  case $target in
    # The server targets keep a server (and its io/disk threads) running for
    # the whole process and never tear it down; LeakSanitizer would report
    # whatever those threads hold at exit, which is noise, not findings.
    fuzz_central_server | fuzz_peer_server) flags+=(-detect_leaks=0) ;;
  esac
  local log=$scratch/$target/log rc runs speed cov
  echo "== $target: ${seconds}s" >&2
  set +e
  # TMPDIR: the server targets make their data dirs there, so they go with
  # the scratch dir even if a crash skips their own cleanup.
  TMPDIR=$scratch/$target/tmp UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$binary" "${flags[@]}" "$corpus" >"$log" 2>&1
  rc=$?
  set -e
  # (|| true: a target that died before printing these must not end the script.)
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1 || true)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  if [[ $rc -eq 0 && -n $runs ]]; then
    printf '%-22s ok     %9s runs  %6s exec/s  cov %s\n' "$target" "$runs" "${speed:-?}" "${cov:-?}" \
      >"$scratch/$target/summary"
    return 0
  fi
  printf '%-22s FAILED (exit %s) after %s runs; input in %s\n' "$target" "$rc" \
    "$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)" "$artifacts/" >"$scratch/$target/summary"
  echo "--- $target log (tail) ---" >&2
  tail -n 60 "$log" >&2
  return 1
}

# As many targets at once as there are cores: each is one fuzzing process
# (the server targets' own threads mostly wait on loopback), so the stage
# takes SECONDS x ceil(targets / cores) instead of SECONDS x targets.
parallel=$(nproc)
status=0
running=0
for target in "${targets[@]}"; do
  if ((running >= parallel)); then
    wait -n || status=1
    running=$((running - 1))
  fi
  run_target "$target" &
  running=$((running + 1))
done
while ((running > 0)); do
  wait -n || status=1
  running=$((running - 1))
done

for target in "${targets[@]}"; do
  cat "$scratch/$target/summary" 2>/dev/null || printf '%-22s FAILED (no result)\n' "$target"
done
exit $status
