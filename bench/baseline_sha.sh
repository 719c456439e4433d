#!/usr/bin/env bash
# Hashing ceiling: how fast this CPU can SHA-256 a file that is already in
# the page cache, via OpenSSL (SHA-NI/AVX when present) and coreutils.
# A content-addressed transfer can't verify faster than this on one core.
#
# usage: bench/baseline_sha.sh [SIZE]        (default 1G; env BENCH_RUNS=3)
# stdout: sha_bytes, sha_openssl_seconds, sha_openssl_gbps,
#         sha_sha256sum_seconds, sha_sha256sum_gbps, sha_runs
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

SIZE=${1:-1G}
BYTES=$(parse_size "$SIZE")
LIMIT=$(( 30 + BYTES / 20000000 ))

install_if_missing openssl coreutils
bench_tmp
SRC=$BENCH_TMP/src
log "creating $SIZE test file"
make_file "$SRC" "$SIZE"
warm_cache "$SRC"

ossl=() sum=()
for run in $(seq 1 "$BENCH_RUNS"); do
    ossl+=("$(time_cmd timeout "$LIMIT" openssl dgst -sha256 "$SRC")")
    sum+=("$(time_cmd timeout "$LIMIT" sha256sum "$SRC")")
    log "run $run: openssl ${ossl[-1]}s, sha256sum ${sum[-1]}s"
done
# Both tools must agree, or one of the timings measured something else.
a=$(openssl dgst -sha256 -r "$SRC" | cut -d' ' -f1)
b=$(sha256sum "$SRC" | cut -d' ' -f1)
[ "$a" = "$b" ] || die "openssl and sha256sum disagree"

to=$(median "${ossl[@]}")
ts=$(median "${sum[@]}")
echo "sha_bytes=$BYTES"
echo "sha_openssl_seconds=$to"
echo "sha_openssl_gbps=$(gbps "$BYTES" "$to")"
echo "sha_sha256sum_seconds=$ts"
echo "sha_sha256sum_gbps=$(gbps "$BYTES" "$ts")"
echo "sha_runs=$BENCH_RUNS"
