#!/usr/bin/env bash
# Builds and runs every test: the style check, clang-tidy on src/ and cmd/,
# the unit and end-to-end suites in release, under ASan+UBSan and under TSan,
# each fuzzer for a bounded time, and a small run of the benchmarks so they
# never rot, and the Debian package (built and checked: lintian, units, man
# pages, completion, the packaged binary, install/upgrade/remove). Installs
# what is missing first. Exits non-zero on the first
# failure.
#
#   scripts/test.sh              everything
#   P2PSHARE_TEST_STAGES="release asan" scripts/test.sh     a subset
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/setup.sh"

stages=${P2PSHARE_TEST_STAGES:-"format tidy release package asan tsan fuzz bench"}
jobs=$(nproc)
fuzz_seconds=${P2PSHARE_FUZZ_SECONDS:-30}

section() { printf '\n===== %s =====\n' "$*"; }

# How long each stage took, printed at the end: the whole command must stay
# well inside CI's limit, and this says which stage to make faster.
timings=()
for stage in $stages; do
  stage_start=$SECONDS
  case "$stage" in
    format)
      section "clang-format check"
      mapfile -t sources < <(git ls-files '*.cpp' '*.hpp' '*.h' '*.cc')
      clang-format --dry-run --Werror "${sources[@]}"
      echo "formatting ok (${#sources[@]} files)"
      ;;
    tidy)
      section "clang-tidy on src/ and cmd/"
      # The release build's compile_commands.json, and the protobuf headers
      # the sources include: configured and generated here, so the stage
      # also runs first in a fresh clone.
      cmake --preset release >/dev/null
      cmake --build --preset release -j"$jobs" --target p2pshare_proto >/dev/null
      mapfile -t tidy_sources < <(git ls-files 'src/*.cpp' 'cmd/*.cpp')
      # One clang-tidy per file, $jobs at a time; any finding is an error
      # (--warnings-as-errors), and xargs fails if any file fails.
      printf '%s\n' "${tidy_sources[@]}" |
        xargs -P "$jobs" -n 1 clang-tidy -p build/release --quiet --warnings-as-errors='*'
      echo "clang-tidy ok (${#tidy_sources[@]} files)"
      ;;
    release|debug|asan|tsan)
      section "build and test: $stage"
      cmake --preset "$stage" >/dev/null
      cmake --build --preset "$stage" -j"$jobs"
      # Sanitizer builds run the same tests but for the slow end-to-end ones
      # (multi-GiB files, rates measured over seconds), which run in release.
      exclude=()
      [[ $stage == release ]] || exclude=(-E '^slow:')
      ctest --preset "$stage" -j"$jobs" --timeout 900 "${exclude[@]}"
      ;;
    package)
      # Packages build/release's binary (the release preset has Debian's
      # hardening flags): after the release stage nothing is recompiled.
      section "Debian package: build and check"
      bash tests/package/check.sh
      ;;
    fuzz)
      section "fuzzing, ${fuzz_seconds}s per target"
      bash tests/fuzz/run.sh "$fuzz_seconds"
      ;;
    bench)
      section "benchmarks, small run"
      BENCH_SMALL=1 bash bench/run.sh
      ;;
    *)
      echo "unknown stage '$stage'" >&2
      exit 2
      ;;
  esac
  timings+=("$(printf '%-8s %5d s' "$stage" $((SECONDS - stage_start)))")
done
section "all stages passed: $stages"
printf '%s\n' "${timings[@]}"
echo "total    $(printf '%5d' "$SECONDS") s"
