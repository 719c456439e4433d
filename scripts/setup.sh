#!/usr/bin/env bash
# Installs what p2pshare needs from Debian's packages, skipping what is there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  clang clang-format clang-tidy libclang-rt-14-dev   # fuzzing, sanitizers, style
  libasio-dev libprotobuf-dev protobuf-compiler libcxxopts-dev libfmt-dev
  catch2 nlohmann-json3-dev libssl-dev libsqlite3-dev
  libtomlplusplus-dev   # the config file (TOML)
  libsodium-dev   # Argon2id password hashes, Ed25519 capability checks (accounts)
  xxd   # scripts/file_id.sh, the independent file-id check
  dpkg-dev lintian help2man bash-completion man-db systemd   # scripts/package.sh, the package stage
  libhttp-parser-dev   # the HTTP side's request parser (--http-addr)
  prometheus chromium   # tests: promtool check metrics; the dashboards in a headless browser
  curl   # bench/http_bench.sh
  postgresql-15 libpq-dev   # central-server --store postgresql://; tests/pg/cluster.sh for the tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
