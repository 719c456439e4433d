#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests: `cluster.sh start DIR` makes a fresh
# cluster in DIR (data in DIR/data, the unix socket in DIR itself, no TCP
# listener) with trust authentication and durability off (fsync and
# synchronous_commit: fine for tests, never for benchmarks), and waits until
# it accepts connections; `cluster.sh stop DIR` stops it by its
# postmaster.pid and removes DIR. `cluster.sh url DIR` prints the URL the
# tests take in P2PSHARE_TEST_PG.
#
# initdb refuses to run as root (the suite runs as root in CI): then the
# server runs as the `postgres` system user, DIR chowned to it.
set -euo pipefail

usage() { echo "usage: $0 start|stop|url DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd=$1
dir=$2
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac

pgbin=${P2PSHARE_PG_BIN:-/usr/lib/postgresql/15/bin}
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
  as_owner=(runuser -u postgres --)
fi

url() { printf 'postgresql:///postgres?host=%s&user=postgres\n' "$dir"; }

stop() {
  local pidfile="$dir/data/postmaster.pid"
  if [[ -f $pidfile ]]; then
    local pid
    pid=$(head -n 1 "$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      # Fast shutdown: ends the sessions, no waiting for clients.
      kill -INT "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do   # up to 10 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if kill -0 "$pid" 2>/dev/null; then
        echo "cluster.sh: postmaster $pid did not stop in 10 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -rf "$dir"
}

start() {
  [[ -x $pgbin/initdb ]] || { echo "cluster.sh: no $pgbin/initdb (install postgresql-15: scripts/setup.sh)" >&2; exit 1; }
  # A socket path longer than sun_path (107 bytes) cannot be bound.
  local sock="$dir/.s.PGSQL.5432"
  if ((${#sock} > 100)); then
    echo "cluster.sh: socket path $sock is too long for a unix socket" >&2
    exit 1
  fi
  stop   # a cluster left by an interrupted run
  mkdir -p "$dir"
  chmod 755 "$dir"
  if ((${#as_owner[@]})); then chown postgres: "$dir"; fi
  "${as_owner[@]}" "$pgbin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
    --no-sync >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  "${as_owner[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -s -o \
    "-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$dir/server.log" >&2 2>/dev/null; exit 1; }
  for _ in $(seq 1 300); do   # up to 30 s
    if "$pgbin/pg_isready" -q -h "$dir" -U postgres; then
      url
      return 0
    fi
    sleep 0.1
  done
  echo "cluster.sh: PostgreSQL in $dir not ready after 30 s" >&2
  cat "$dir/server.log" >&2 2>/dev/null || true
  exit 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  url) url ;;
  *) usage ;;
esac
