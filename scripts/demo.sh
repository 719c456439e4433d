#!/usr/bin/env bash
# The main job: a local swarm on loopback. A central server and three peers;
# files from files/ (and a larger generated one) registered on two peers and
# downloaded by the third with its progress shown; bytes compared; everything
# shut down cleanly. Installs and builds what is missing first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
"$root/scripts/build.sh" release
bin="$root/build/release/p2pshare"

work=$(mktemp -d /tmp/p2pshare-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits (bounded) for a server's "listening on HOST:PORT" line and prints the address.
listening() {
  for _ in $(seq 100); do
    if grep -q '^listening on ' "$1" 2>/dev/null; then sed -n 's/^listening on //p' "$1"; return; fi
    sleep 0.1
  done
  echo "server did not start: $(cat "$1.err" 2>/dev/null)" >&2
  exit 1
}

echo "== central server"
"$bin" central-server --addr 127.0.0.1:0 --data-dir "$work/central" >"$work/central.out" 2>"$work/central.out.err" &
pids+=($!)
central=$(listening "$work/central.out")
echo "   $central"

declare -A addr
for p in alice bob carol; do
  "$bin" peer-server --central-server-addr "$central" --addr 127.0.0.1:0 --data-dir "$work/$p" \
    >"$work/$p.out" 2>"$work/$p.out.err" &
  pids+=($!)
  addr[$p]=$(listening "$work/$p.out")
  echo "== peer $p on ${addr[$p]}"
done

# A larger file, so the progress bar has something to show.
head -c $((256 * 1024 * 1024)) /dev/urandom >"$work/big.bin"
files=("$root"/files/*.txt "$work/big.bin")

declare -A ids
for f in "${files[@]}"; do
  id=$("$bin" register-file --path "$f" --peer-addr "${addr[alice]}" --data-dir "$work/alice")
  ids[$f]=$id
  "$bin" register-file --path "$f" --peer-addr "${addr[bob]}" --data-dir "$work/bob" >/dev/null
  echo "== registered $(basename "$f") on alice and bob: $id"
done

echo "== the central server knows"
# --data-dir: carol's, where she keeps the central server's fingerprint
# (trusted on first contact), not the default one of whoever runs the demo.
"$bin" list-files --central-server-addr "$central" --data-dir "$work/carol"

for f in "${files[@]}"; do
  id=${ids[$f]}
  echo "== carol downloads $(basename "$f")"
  got=$("$bin" request-file --file-id "$id" --peer-addr "${addr[carol]}" --data-dir "$work/carol")
  cmp "$f" "$got"
  echo "   $got: identical to the original"
done

echo "== carol's status"
"$bin" status --peer-addr "${addr[carol]}" --data-dir "$work/carol"

echo "== shutting down"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then echo "a server did not exit cleanly" >&2; exit 1; fi
done
pids=()
echo "== demo passed"
