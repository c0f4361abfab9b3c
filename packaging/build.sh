#!/bin/sh
# Configures and builds colod into ${BUILD_DIR:-build}: by default with Ninja, a release build
# with debug info; GENERATOR and BUILD_TYPE choose others (CI builds with "Unix Makefiles" and
# Release, the forms a user's plain cmake commands take).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
cmake -S "$top" -B "$build" -G "${GENERATOR:-Ninja}" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
cmake --build "$build" -j"${JOBS:-$(nproc)}"
