#!/usr/bin/env bash
# Builds the Debian package: configures the release build directory for
# packaging (prefix /usr, P2PSHARE_PACKAGE=ON, Debian's hardening flags),
# builds the binary and, from its --help, the man pages and bash completion,
# and runs cpack (DEB generator). Prints the .deb's absolute path as its last
# line.
#
#   scripts/package.sh
#   P2PSHARE_PACKAGE_BUILD_DIR=/tmp/pkg scripts/package.sh    another build dir
#
# The release preset (CMakePresets.json) compiles with the very flags
# dpkg-buildflags gives, so after `cmake --build --preset release` (the
# release stage of scripts/test.sh) the binary is already built and this
# recompiles nothing but cmd/main.cpp if the commit changed. If the flags ever
# differ, the build dir is recompiled with Debian's (and a warning says so):
# the package is always built with dpkg-buildflags' flags. A build dir
# configured with a compiler launcher (ccache) keeps it. Needs
# scripts/setup.sh's packages (dpkg-dev, help2man, bash-completion, ...).
set -euo pipefail
# pwd -P: dpkg-buildflags maps the current directory (-ffile-prefix-map=$PWD=.),
# the release preset maps ${sourceDir}, which CMake resolves.
root=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$root"
build=${P2PSHARE_PACKAGE_BUILD_DIR:-$root/build/release}
jobs=${P2PSHARE_JOBS:-$(nproc)}

# Debian's hardening flags (stack protector, _FORTIFY_SOURCE, relro, bindnow),
# as dpkg-buildpackage would pass them with hardening=+all.
# Without -g: the binary is stripped and no -dbgsym package is made, so debug
# info would only slow the build.
export DEB_BUILD_MAINT_OPTIONS=${DEB_BUILD_MAINT_OPTIONS:-hardening=+all}
export DEB_CXXFLAGS_MAINT_STRIP=${DEB_CXXFLAGS_MAINT_STRIP:--g}
cxxflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS)"
ldflags=$(dpkg-buildflags --get LDFLAGS)
if [[ -f $build/CMakeCache.txt ]]; then
  configured=$(sed -n 's/^CMAKE_CXX_FLAGS:[A-Z]*=//p' "$build/CMakeCache.txt")
  if [[ $configured != "$cxxflags" ]]; then
    echo "package.sh: $build was configured with CXXFLAGS '$configured';" \
      "dpkg-buildflags gives '$cxxflags': recompiling with Debian's (make CMakePresets.json's release preset match)" >&2
  fi
fi
# Configured every time: --version names the commit at configure time.
# CMAKE_SKIP_INSTALL_ALL_DEPENDENCY: cpack installs what we built below,
# without building every other target (the tests) first.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" \
  -DP2PSHARE_PACKAGE=ON -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >&2
cmake --build "$build" -j"$jobs" --target p2pshare p2pshare_docs >&2

rm -f "$build"/deb/*.deb
(cd "$build" && cpack -G DEB --config CPackConfig.cmake) >&2
debs=("$build"/deb/*.deb)
[[ ${#debs[@]} -eq 1 && -f ${debs[0]} ]] || { echo "package.sh: expected one .deb in $build/deb" >&2; exit 1; }
realpath "${debs[0]}"
