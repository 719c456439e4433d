#!/usr/bin/env bash
# The `package` stage of scripts/test.sh: builds the .deb (scripts/package.sh)
# and checks it.
#   1. lintian: no errors (warnings are printed);
#   2. every man page renders with `man -l` without a warning, one per command;
#   3. bash completion offers every command `p2pshare --help` lists, and a
#      command's options (request-file --f -> --file-id);
#   4. the binary extracted from the .deb (dpkg-deb -x) passes a smoke test on
#      loopback: a central server, two peer-servers, a file registered on one
#      and requested by the other, bytes compared;
#   5. dpkg -i, systemd-analyze verify on both installed units (the template
#      through an instance), no service enabled or started, dpkg -i again
#      (upgrade over itself), dpkg -r, dpkg -P: nothing the package installed
#      is left. The p2pshare system user is left by the purge (Debian
#      practice); this script then deletes it if it created it, so the
#      machine ends as it began.
# Needs root for dpkg (sudo otherwise). Refuses to run if p2pshare is already
# installed. Every wait is bounded; only the PIDs started here are killed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

log() { printf '[package] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)

if dpkg-query -W -f '${Status}' p2pshare 2>/dev/null | grep -q 'installed'; then
  die "p2pshare is already installed on this machine; this check installs and purges it"
fi

tmp=$(mktemp -d)
pids=()
installed=0
user_before=0
getent passwd p2pshare >/dev/null && user_before=1
cleanup() {
  local rc=$? pid
  for pid in "${pids[@]}"; do
    [[ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$$" ]] && kill "$pid" 2>/dev/null
  done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((installed)) && dpkg-query -W p2pshare >/dev/null 2>&1; then
    log "cleanup: purging p2pshare"
    "${sudo_cmd[@]}" dpkg -P p2pshare >/dev/null || true
  fi
  if ((!user_before)) && getent passwd p2pshare >/dev/null; then
    "${sudo_cmd[@]}" userdel p2pshare || true
    getent group p2pshare >/dev/null && { "${sudo_cmd[@]}" groupdel p2pshare || true; }
  fi
  rm -rf -- "$tmp"
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build --------------------------------------------------------------------
deb=$(scripts/package.sh | tail -n 1)
[[ -f $deb ]] || die "scripts/package.sh printed '$deb', not a .deb"
log "package: $deb"

# --- 1. lintian ---------------------------------------------------------------
log "lintian"
lint_rc=0
lint=$(lintian --fail-on error "$deb" 2>&1) || lint_rc=$?
grep -v '^running with root privileges' <<<"$lint" >&2 || true
((lint_rc == 0)) || die "lintian reports errors (exit $lint_rc)"

dpkg-deb -x "$deb" "$tmp/root"
bin=$tmp/root/usr/bin/p2pshare
# --version: the package's upstream version and the commit (or "unknown").
upstream=$(dpkg-deb -f "$deb" Version)
upstream=${upstream%-*}
version=$("$bin" --version)
[[ $version =~ ^p2pshare\ ${upstream//./\\.}\ \(commit\ ([0-9a-f]{7,}(-dirty)?|unknown)\)$ ]] ||
  die "--version says '$version', not 'p2pshare $upstream (commit ...)'"
log "$version"
mapfile -t commands < <("$bin" --help | awk '/^Commands:/ {on = 1; next} on && /^  [a-z]/ {print $1}')
((${#commands[@]} >= 9)) || die "p2pshare --help lists ${#commands[@]} commands"

# --- 2. man pages -------------------------------------------------------------
log "man pages"
man1=$tmp/root/usr/share/man/man1
for page in p2pshare "${commands[@]/#/p2pshare-}"; do
  f=$man1/$page.1.gz
  [[ -f $f ]] || die "no man page $page(1)"
  warnings=$(MANWIDTH=80 man --warnings -l "$f" 2>&1 >/dev/null) || die "man -l $page.1.gz failed: $warnings"
  [[ -z $warnings ]] || die "man -l $page.1.gz warns: $warnings"
done
zgrep -q -- 'file\\-id' "$man1/p2pshare-request-file.1.gz" || die "p2pshare-request-file(1) lacks --file-id"
log "  $((${#commands[@]} + 1)) pages render without warnings"

# --- 3. bash completion -------------------------------------------------------
log "bash completion"
complete_words() { # complete_words WORD... : what Tab offers for the last word
  bash --norc --noprofile -c '
    . /usr/share/bash-completion/bash_completion
    . "$0"
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
    COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
    _p2pshare p2pshare "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    printf "%s\n" "${COMPREPLY[@]}"' \
    "$tmp/root/usr/share/bash-completion/completions/p2pshare" p2pshare "$@"
}
offered=$(complete_words "")
for c in "${commands[@]}"; do
  grep -qx -- "$c" <<<"$offered" || die "completion does not offer command $c (offers: $offered)"
done
[[ $(complete_words request-file --f) == --file-id ]] || die "request-file --f does not complete to --file-id"
for c in "${commands[@]}"; do
  offered=$(complete_words "$c" --)
  for opt in $("$bin" "$c" --help | grep -oE '^  (-[A-Za-z], |    )--[a-z0-9-]+' | grep -oE -- '--[a-z0-9-]+'); do
    grep -qx -- "$opt" <<<"$offered" || die "completion of '$c --' lacks $opt"
  done
done
log "  every command, and every option of each"

# --- 4. smoke test with the extracted binary ----------------------------------
log "smoke test: central server, two peers, one file (extracted binary)"
start() { # start NAME ARGS... : runs the binary in the background, logs in $tmp/NAME.{out,err}
  local name=$1
  shift
  "$bin" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
}
listening() { # listening NAME : the HOST:PORT from "listening on HOST:PORT", within 15 s
  local deadline=$((SECONDS + 15)) addr
  while ((SECONDS < deadline)); do
    addr=$(sed -n 's/^listening on //p' "$tmp/$1.out" | head -n 1)
    [[ -n $addr ]] && { echo "$addr"; return; }
    sleep 0.1
  done
  cat "$tmp/$1.err" >&2
  die "$1 did not report 'listening on' within 15 s"
}
start central central-server --addr 127.0.0.1:0 --data-dir "$tmp/central"
central=$(listening central)
start peer-a peer-server --central-server-addr "$central" --addr 127.0.0.1:0 --data-dir "$tmp/peer-a"
start peer-b peer-server --central-server-addr "$central" --addr 127.0.0.1:0 --data-dir "$tmp/peer-b"
peer_a=$(listening peer-a)
peer_b=$(listening peer-b)
head -c $((3 * 1024 * 1024 + 12345)) /dev/urandom >"$tmp/shared.bin"
id=$(timeout 30 "$bin" register-file --path "$tmp/shared.bin" --peer-addr "$peer_a" --data-dir "$tmp/peer-a") ||
  die "register-file failed"
got=$(timeout 60 "$bin" request-file --file-id "$id" --out "$tmp/got.bin" --wait \
  --peer-addr "$peer_b" --data-dir "$tmp/peer-b") || die "request-file failed"
cmp "$tmp/shared.bin" "$got" || die "downloaded bytes differ"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do
  timeout 15 tail --pid="$pid" -f /dev/null || die "server $pid did not exit within 15 s of SIGTERM"
done
for pid in "${pids[@]}"; do wait "$pid" || die "a server exited non-zero after SIGTERM"; done
pids=()
log "  $(stat -c %s "$tmp/shared.bin") bytes, file id ${id:0:16}..., identical"

# --- 5. install, verify units, upgrade over itself, remove, purge --------------
log "dpkg -i"
mapfile -t payload < <(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' | grep -v '^$')
existed=()
for p in "${payload[@]}"; do [[ -e $p || -L $p ]] && existed+=("$p"); done
state_before=0
[[ -e /var/lib/p2pshare ]] && state_before=1
installed=1
"${sudo_cmd[@]}" dpkg -i "$deb" >&2
getent passwd p2pshare >/dev/null || die "postinst created no p2pshare user"
[[ $(/usr/bin/p2pshare --version) == "$("$bin" --version)" ]] || die "installed --version differs"
man -w p2pshare-request-file >/dev/null || die "man does not find p2pshare-request-file"
unitdir=$(dirname "$(dpkg -L p2pshare | grep '/p2pshare-central.service$')")

log "systemd-analyze verify"
mkdir "$tmp/units"
ln -s "$unitdir/p2pshare-peer@.service" "$tmp/units/p2pshare-peer@test.service"
systemd-analyze verify "$unitdir/p2pshare-central.service" "$tmp/units/p2pshare-peer@test.service" ||
  die "systemd-analyze verify rejects the units"
if compgen -G '/etc/systemd/system/*.wants/p2pshare*' >/dev/null; then
  die "installing enabled a p2pshare service"
fi

log "dpkg -i again (upgrade over itself)"
"${sudo_cmd[@]}" dpkg -i "$deb" >&2
mapfile -t listed < <(dpkg -L p2pshare)

log "dpkg -r, dpkg -P"
"${sudo_cmd[@]}" dpkg -r p2pshare >&2
"${sudo_cmd[@]}" dpkg -P p2pshare >&2
installed=0
dpkg-query -W p2pshare >/dev/null 2>&1 && die "p2pshare still known to dpkg after purge"
left=()
for p in "${listed[@]}" "${payload[@]}"; do
  [[ $p == / || $p == /. ]] && continue
  [[ -e $p || -L $p ]] || continue
  printf '%s\n' "${existed[@]}" | grep -qxF -- "$p" || left+=("$p")
done
((${#left[@]} == 0)) || die "left behind after purge: ${left[*]}"
((state_before)) || [[ ! -e /var/lib/p2pshare ]] || die "/var/lib/p2pshare left behind (no service ran)"
log "  nothing left but the p2pshare user (Debian practice; removed by this check if it created it)"
log "package stage passed"
