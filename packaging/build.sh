#!/bin/sh
# Configures and builds colod into ${BUILD_DIR:-build} (release build with debug info).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$top/build}
cmake -S "$top" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
ninja -C "$build" -j"${JOBS:-$(nproc)}"
