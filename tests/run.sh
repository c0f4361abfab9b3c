#!/bin/sh
# Runs the whole test suite: installs dependencies, builds with warnings as errors, runs every
# CTest label (unit, kvm, integration, reliability, fuzz corpus replay). Extra arguments go to
# ctest (e.g. -L unit).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/packaging/install-deps.sh"
BUILD_DIR=${BUILD_DIR:-$top/build} "$top/packaging/build.sh" -DCOLOD_WERROR=ON -DCOLOD_TESTS=ON
cd "${BUILD_DIR:-$top/build}"
ctest --output-on-failure --timeout 600 -j"${TEST_JOBS:-1}" "$@"
