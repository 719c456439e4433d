#!/usr/bin/env bash
# Computes a file's p2pshare id with coreutils alone, from docs/protocol.md:
# an independent implementation that the tests check against p2pshare's own.
set -euo pipefail
file=$1
size=$(stat -c %s "$file")
cs=262144
while (( (size + cs - 1) / cs > 65536 )); do cs=$((cs * 2)); done
{
  printf 'p2pshare-file-v1'
  printf '%016x%08x%08x' "$size" "$cs" "$(( (size + cs - 1) / cs ))" | xxd -r -p
  split -b "$cs" --filter='sha256sum | cut -c1-64 | xxd -r -p' "$file"
} | sha256sum | cut -c1-64
