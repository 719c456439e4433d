#!/usr/bin/env bash
# Generates the man pages and the bash completion from the built binary's
# --help output, so they list exactly the commands and options the binary
# has (a new flag appears by itself). Run by the build when P2PSHARE_PACKAGE
# is on:
#
#   packaging/gen-docs.sh BUILT-BINARY OUT-DIR [SYSTEMD-UNIT-DIR]
#
# OUT-DIR/man1/p2pshare.1.gz, OUT-DIR/man1/p2pshare-COMMAND.1.gz (help2man),
# OUT-DIR/completion/p2pshare (bash).
set -euo pipefail
bin=$(realpath "$1")
out=$2
unitdir=${3:-/lib/systemd/system}

# Defaults derived from $HOME read "~/.local/share/..." in the pages, not the
# builder's home; dates come from SOURCE_DATE_EPOCH when set (reproducible).
export HOME='~'
unset XDG_DATA_HOME
export LC_ALL=C.UTF-8

tmp=$(mktemp -d)
trap 'rm -rf -- "$tmp"' EXIT
rm -rf -- "$out/man1" "$out/completion"
mkdir -p "$out/man1" "$out/completion"

# "  NAME  SUMMARY" lines under "Commands:" in `p2pshare --help`.
mapfile -t lines < <("$bin" --help | awk '/^Commands:/ {on = 1; next} on && /^  [a-z]/')
((${#lines[@]})) || { echo "gen-docs: no commands in '$bin --help'" >&2; exit 1; }
commands=()
for line in "${lines[@]}"; do
  read -r name summary <<<"$line"
  commands+=("$name")
  summaries+=("$summary")
done

# Options of one command: "--name" and "--name=" (takes a value) per line,
# from cxxopts' "  -h, --help" / "      --file-id arg" lines.
options_of() {
  "$bin" "$1" --help | sed -nE 's/^  (-[A-Za-z], |    )(--[A-Za-z0-9][A-Za-z0-9-]*)( arg)?.*/\2 \3/p' |
    while read -r opt arg; do
      if [[ -n $arg ]]; then echo "$opt="; else echo "$opt"; fi
    done
}

# --- man pages --------------------------------------------------------------
see_also=$(printf '.BR p2pshare-%s (1),\n' "${commands[@]}")
{
  printf '[SEE ALSO]\n%s\n' "${see_also%,}"
  cat <<'TXT'
[FILES]
.TP
.I UNITDIR/p2pshare-central.service
the central server as a service; addresses in
.IR /etc/p2pshare/central.env .
.TP
.I UNITDIR/p2pshare-peer@.service
a peer-server per instance NAME; addresses in
.IR /etc/p2pshare/peer-NAME.env ,
data in
.IR /var/lib/p2pshare/peer-NAME .
.TP
.I /usr/share/doc/p2pshare/examples/
the two environment files, to copy.
[EXIT STATUS]
0 success, 1 the operation failed (one line on stderr says why), 2 the command line is wrong.
TXT
} | sed "s|UNITDIR|$unitdir|" >"$tmp/main.h2m"
help2man --no-info --no-discard-stderr --section=1 --name="peer-to-peer file sharing" \
  --include="$tmp/main.h2m" --output="$out/man1/p2pshare.1" "$bin"

for i in "${!commands[@]}"; do
  cmd=${commands[$i]}
  # help2man calls PROGRAM --help and PROGRAM --version: a wrapper that is
  # `p2pshare CMD` for the first and names itself p2pshare-CMD for the second.
  wrapper="$tmp/p2pshare-$cmd"
  cat >"$wrapper" <<SH
#!/bin/sh
if [ "\$1" = --version ]; then "$bin" --version | sed '1s/^p2pshare /p2pshare-$cmd /'; exit; fi
exec "$bin" $cmd "\$@"
SH
  chmod +x "$wrapper"
  printf '[SEE ALSO]\n.BR p2pshare (1)\n' >"$tmp/$cmd.h2m"
  help2man --no-info --no-discard-stderr --section=1 --name="${summaries[$i]}" \
    --include="$tmp/$cmd.h2m" --output="$out/man1/p2pshare-$cmd.1" "$wrapper"
done
# help2man's header names the wrapper's path: keep the page names only.
sed -i "s|$tmp/||g" "$out"/man1/*.1
gzip -9n "$out"/man1/*.1

# --- bash completion --------------------------------------------------------
{
  cat <<'SH'
# bash completion for p2pshare(1). Generated from `p2pshare --help` and
# `p2pshare COMMAND --help` by packaging/gen-docs.sh: do not edit.
_p2pshare() {
  local cur prev words cword
  _init_completion -n = || return

  if ((cword == 1)); then
SH
  # shellcheck disable=SC2016 # $cur is for the generated script
  printf '    COMPREPLY=($(compgen -W "%s --help --version" -- "$cur"))\n' "${commands[*]}"
  cat <<'SH'
    return
  fi

  local opts
  case ${words[1]} in
SH
  for cmd in "${commands[@]}"; do
    mapfile -t opts < <(options_of "$cmd")
    printf '    %s) opts="%s" ;;\n' "$cmd" "${opts[*]}"
  done
  cat <<'SH'
    *) return ;;
  esac

  # The value of an option that takes one: directories for *-dir, files for
  # --path and --out, nothing to offer for the rest (addresses, ids, numbers).
  if [[ " $opts " == *" $prev= "* ]]; then
    case $prev in
      *-dir) _filedir -d ;;
      --path | --out) _filedir ;;
    esac
    return
  fi

  COMPREPLY=($(compgen -W "${opts//=/}" -- "$cur"))
}
complete -F _p2pshare p2pshare
SH
} >"$out/completion/p2pshare"
