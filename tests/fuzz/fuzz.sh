#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
# Builds one fuzz target with clang (libFuzzer + ASan + UBSan) and fuzzes it for a set time.
#
#   tests/fuzz/fuzz.sh TARGET SECONDS        e.g. tests/fuzz/fuzz.sh proto_fuzz_state 300
#
# Targets: proto_fuzz_frame, proto_fuzz_messages, proto_fuzz_state, proto_fuzz_snapshot.
# The checked-in corpus (tests/fuzz/corpus/TARGET) is read, never written: new inputs go to
# $BUILD/fuzz-work/TARGET; crashes to $BUILD/fuzz-work/TARGET-artifacts/. To keep interesting
# new inputs, merge them into the checked-in corpus by hand:
#   $BUILD/tests/fuzz/TARGET -merge=1 tests/fuzz/corpus/TARGET $BUILD/fuzz-work/TARGET
# Environment: COLOD_FUZZ_BUILD (build directory, default build-fuzz in the checkout),
# CLANG_SUFFIX (default -14), FUZZ_JOBS (parallel fuzzing processes, default 1).
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${COLOD_FUZZ_BUILD:-$root/build-fuzz}
suffix=${CLANG_SUFFIX:--14}
jobs=${FUZZ_JOBS:-1}

if [ ! -f "$build/build.ninja" ]; then
    CC=clang$suffix CXX=clang++$suffix cmake -S "$root" -B "$build" -G Ninja \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOLOD_FUZZ=ON -DCOLOD_SANITIZE=address,undefined
fi
ninja -C "$build" -j2 "$target"

work=$build/fuzz-work/$target
artifacts=$build/fuzz-work/$target-artifacts/
mkdir -p "$work" "$artifacts"
# libFuzzer writes worker logs (fuzz-N.log) into the current directory: keep them out of the checkout.
cd "$build/fuzz-work"
set -- -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts" -rss_limit_mb=2048
if [ "$jobs" -gt 1 ]; then
    set -- "$@" -jobs="$jobs" -workers="$jobs"
fi
exec "$build/tests/fuzz/$target" "$@" "$work" "$root/tests/fuzz/corpus/$target"
