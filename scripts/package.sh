#!/usr/bin/env bash
# Builds the Debian package: configures its own build directory (Release,
# prefix /usr, P2PSHARE_PACKAGE=ON), builds the binary and, from its --help,
# the man pages and bash completion, and runs cpack (DEB generator). Prints
# the .deb's absolute path as its last line.
#
#   scripts/package.sh
#   P2PSHARE_PACKAGE_BUILD_DIR=/tmp/pkg scripts/package.sh    another build dir
#
# Uses ccache when it is installed (CMAKE_CXX_COMPILER_LAUNCHER). Needs
# scripts/setup.sh's packages (dpkg-dev, help2man, bash-completion, ...).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${P2PSHARE_PACKAGE_BUILD_DIR:-$root/build/package}
jobs=${P2PSHARE_JOBS:-$(nproc)}

# Debian's hardening flags (stack protector, _FORTIFY_SOURCE, relro, bindnow),
# as dpkg-buildpackage would pass them with hardening=+all.
# Without -g: the binary is stripped and no -dbgsym package is made, so debug
# info would only slow the build.
export DEB_BUILD_MAINT_OPTIONS=${DEB_BUILD_MAINT_OPTIONS:-hardening=+all}
export DEB_CXXFLAGS_MAINT_STRIP=${DEB_CXXFLAGS_MAINT_STRIP:--g}
cxxflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS)"
ldflags=$(dpkg-buildflags --get LDFLAGS)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
# Configured every time: --version names the commit at configure time.
# CMAKE_SKIP_INSTALL_ALL_DEPENDENCY: cpack installs what we built below,
# without building every other target first.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" \
  -DP2PSHARE_PACKAGE=ON -DP2PSHARE_TESTS=OFF -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON "${launcher[@]}" >&2
cmake --build "$build" -j"$jobs" --target p2pshare p2pshare_docs >&2

rm -f "$build"/deb/*.deb
(cd "$build" && cpack -G DEB --config CPackConfig.cmake) >&2
debs=("$build"/deb/*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || { echo "package.sh: expected one .deb in $build/deb" >&2; exit 1; }
realpath "${debs[0]}"
