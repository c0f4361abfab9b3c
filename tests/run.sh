#!/bin/sh
# Runs the whole test suite:
#   1. installs dependencies (packaging/install-deps.sh);
#   2. builds everything with warnings as errors and runs every CTest label (unit, kvm,
#      integration, reliability, fuzz corpus replay) — extra arguments go to this ctest run;
#   3. runs the tests that drive KVM itself on a genuine /dev/kvm: here when the host has one,
#      else nested (tests/hostkvm/nested.sh: Debian's kernel under QEMU's TCG loads kvm_amd):
#      the kvm label (libkvm's host paths, the machine, the KVM API checks) and the hostkvm label
#      (the loopback pair test's and the colo test's [realkvm] cases; the Linux guests' standalone
#      boots and a protected Linux pair across two network namespaces, whose guest is made from
#      Debian's kernel package first) (COLOD_HOSTKVM=0 skips this
#      step; COLOD_HOSTKVM_LABELS, a ctest label regex, changes the set);
#   4. builds the proto and config unit tests and the fuzz corpus replays again with
#      sanitizers (COLOD_SANITIZERS, default "address,undefined"; empty to skip) and runs them;
#      with "thread" (ThreadSanitizer) it builds and runs the engine tests and the loopback pair
#      test (with its daemons) instead. CI (CI=true) also runs the engine tests under
#      ThreadSanitizer after the default set. When step 3 runs nested, step 4 runs beside its
#      first part (single-threaded TCG keeps one core busy, step 4 takes the other).
# Step 2 runs guests on KVM when /dev/kvm can be opened (an emulating KVM, kvm_pvm, counts as
# none: it boots no Linux guest), else on colod's software backend; every
# test binary says which on its first line. Step 2 includes the benchmarks in a short mode
# (label bench): figures printed, no thresholds.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
# sanitize SANITIZERS BUILD_DIR TEST_DIR_FILTER TEST_REGEX TARGET...: one sanitizer build, its tests.
sanitize() {
  s_set=$1 s_build=$2 s_filter=$3 s_tests=$4
  shift 4
  # -O1 keeps this build short.
  cmake -S "$top" -B "$s_build" -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O1 -DCOLOD_WERROR=ON -DCOLOD_TESTS=ON \
        -DCOLOD_FAULT_POINTS=ON "-DCOLOD_SANITIZE=$s_set" "-DCOLOD_TEST_FILTER=$s_filter" >/dev/null
  ninja -C "$s_build" -j"${JOBS:-$(nproc)}" "$@"
  (cd "$s_build" && UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
     TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
     ctest --output-on-failure --timeout 900 -j"${TEST_JOBS:-1}" -R "$s_tests")
}

# The threads of the engines, the virtio devices (doorbell threads, a tap's reader) and the
# daemons: the engine and virtio tests and the loopback pair test.
thread_sanitizer() {
  echo "tests: engine and virtio tests and the loopback pair test again with -fsanitize=thread"
  sanitize thread "${SANITIZE_BUILD_DIR:-$top/build-tsan}" "/tests/(unit/engine|unit/virtio|integration/pair)$" \
    '^(engine_test|virtio_test|virtio_net_test|virtio_blk_test|pair_test)$' engine_test virtio_test virtio_net_test \
    virtio_blk_test pair_test colod-primary colod-secondary coloctl
}

# Step 4: the sanitizer builds and their tests.
sanitizer_steps() {
  sanitizers=${COLOD_SANITIZERS-address,undefined}
  case $sanitizers in
    "") ;;
    thread) thread_sanitizer ;;
    *)
      # The code that reads untrusted bytes (frames, messages, state, snapshots, configs) again
      # with sanitizers: its unit tests and the fuzz corpus replays.
      echo "tests: proto and config unit tests and the fuzz corpus again with -fsanitize=$sanitizers"
      # shellcheck disable=SC2046 # one word per target
      sanitize "$sanitizers" "${SANITIZE_BUILD_DIR:-$top/build-sanitize}" "/tests/(unit/(proto|config)|fuzz)$" \
        '^(config_test|proto_(codec|state|auth|link)_test|proto_fuzz_.*)$' \
        config_test proto_codec_test proto_state_test proto_auth_test proto_link_test \
        $(for f in frame messages state snapshot; do printf 'proto_fuzz_%s_replay ' "$f"; done)
      ;;
  esac

  # CI also runs the engine and virtio tests under ThreadSanitizer (about 4 minutes here). The
  # loopback pair test under it too (COLOD_SANITIZERS=thread) takes CI to about 28 of its 30
  # minutes, too close to run on every change.
  if [ "${CI:-}" = true ] && [ "$sanitizers" != thread ] && [ "${COLOD_CI_TSAN:-1}" = 1 ]; then
    echo "tests: engine and virtio tests again with -fsanitize=thread"
    sanitize thread "$top/build-tsan" "/tests/unit/(engine|virtio)$" \
      '^(engine_test|virtio_test|virtio_net_test|virtio_blk_test)$' engine_test virtio_test virtio_net_test virtio_blk_test
  fi
}

# Internal: tests/run.sh runs step 4 this way beside the nested KVM of step 3.
if [ "${COLOD_RUN_STEP:-}" = sanitizers ]; then
  sanitizer_steps
  exit 0
fi

"$top/packaging/install-deps.sh"

host_kvm=no
# An emulating KVM (the kvm_pvm module: no VMX or SVM, a guest's ring 0 emulated) speaks KVM's
# API but boots no Linux guest and runs no QEMU: such a host counts as one without /dev/kvm, its
# guests on the software backend in step 2 and real KVM nested in step 3.
if [ -d /sys/module/kvm_pvm ] && [ -e /dev/kvm ]; then
  echo "tests: /dev/kvm here is an emulating KVM (kvm_pvm), which runs no Linux guest: it is not used"
  export COLOD_HOST_KVM=0 COLOD_TEST_BACKEND=soft
elif [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
  host_kvm=yes
  echo "tests: /dev/kvm is usable: guests run on KVM"
else
  echo "tests: no usable /dev/kvm on this host: step 2 runs guests on the software backend;"
  echo "tests: KVM itself is tested in step 3, nested under QEMU's TCG"
fi

# CI builds with CMake's default generator (Makefiles) in Release, as a user's plain
# `cmake -S . -B build -DCMAKE_BUILD_TYPE=Release` does, in its own folder; elsewhere Ninja.
if [ "${CI:-}" = true ]; then
  build=${BUILD_DIR:-$top/build-release}
  export GENERATOR="Unix Makefiles" BUILD_TYPE=Release
else
  build=${BUILD_DIR:-$top/build}
fi
BUILD_DIR=$build "$top/packaging/build.sh" -DCOLOD_WERROR=ON -DCOLOD_TESTS=ON -DCOLOD_FAULT_POINTS=ON -DCOLOD_SANITIZE=
(cd "$build" && ctest --output-on-failure --timeout 900 -j"${TEST_JOBS:-1}" -LE '^hostkvm$' "$@")

# The Linux test guest (Debian's kernel package, the project's initramfs: guests/linux/build.sh)
# for the Linux guest tests of step 3. The kernel package is downloaded once, into the folder
# tests/hostkvm/nested.sh keeps its own copy of the same package in.
if [ "${COLOD_HOSTKVM:-1}" != 0 ]; then
  mkdir -p "$top/build/hostkvm/debs"
  COLOD_DEB_CACHE="$top/build/hostkvm/debs" cmake --build "$build" --target colod_linux_guest
fi

# The kvm label, and the cases of pair_test and colo_test tagged [realkvm] (label hostkvm: sync
# and checkpoints under CHURN with digests equal, 10 random primary kills, colo traffic and kills).
hostkvm_labels=${COLOD_HOSTKVM_LABELS:-'^(kvm|hostkvm)$'}
if [ "${COLOD_HOSTKVM:-1}" = 0 ]; then
  echo "tests: COLOD_HOSTKVM=0: the real-KVM step is skipped"
elif [ "$host_kvm" = yes ]; then
  echo "tests: real KVM: step 2 ran every guest test on this host's /dev/kvm; now the hostkvm label"
  (cd "$build" && ctest --output-on-failure -L '^hostkvm$')
else
  # QEMU's single-threaded TCG keeps one core busy: step 4 (the sanitizer builds and tests) runs
  # beside it on the other, in a session of its own (stopped if this script stops), its output
  # shown once it ends.
  sanitizer_log="$top/build/sanitizers.log"
  mkdir -p "$top/build"
  echo "tests: step 4 (sanitizers) runs beside the nested KVM; its output: $sanitizer_log, shown below"
  COLOD_RUN_STEP=sanitizers JOBS=1 setsid "$top/tests/run.sh" >"$sanitizer_log" 2>&1 &
  sanitizer_pid=$!
  trap 'kill -- -"$sanitizer_pid" 2>/dev/null || true' EXIT
  echo "tests: real KVM, nested under QEMU's TCG: ctest -L '$hostkvm_labels' -LE '^linux$'"
  (cd "$build" && "$top/tests/hostkvm/nested.sh" --writable "$build" -- \
     ctest --output-on-failure -L "$hostkvm_labels" -LE '^linux$')
  sanitizer_status=0
  wait "$sanitizer_pid" || sanitizer_status=$?
  trap - EXIT
  cat "$sanitizer_log"
  if [ "$sanitizer_status" != 0 ]; then
    echo "tests: step 4 (sanitizers) failed"
    exit 1
  fi
  sanitizers_done=yes
  # Linux guests do not get through boot under single-threaded TCG (with several vCPUs, with
  # QEMU as their VMM as much as with colod; with one, they stall within minutes:
  # docs/linux-guests.md); multi-threaded TCG runs them: the standalone boots and a protected
  # pair with two kills. The longer pair runs (label linux-pair) are run by hand:
  # tests/integration/linux/CMakeLists.txt says why.
  echo "tests: Linux guests on real KVM, nested under QEMU's multi-threaded TCG: ctest -L '^linux$' -E '^linux_test_pair_ci$'"
  # The nested machine fails there now and then, not colod (docs/linux-guests.md): QEMU's
  # emulated SVM runs a guest on the L1 kernel's own state in about one 4-vCPU boot in four,
  # caught at once (nested.sh: EMULATOR FAULT), or the L1 kernel hangs, caught after a minute
  # without its sign of life. The step is then tried again, up to five times in all; a run of
  # it takes two minutes, so ten minutes stop one that hangs for any other reason.
  # A Linux guest's triple fault counts as the platform's there too (HOSTKVM_GUEST_SHUTDOWN): these
  # tests never triple-fault a guest on purpose, and the emulated MMU loses a guest's page tables
  # under dirty logging now and then (docs/linux-guests.md); a colod bug that kills its guest
  # every time still fails all five tries.
  (cd "$build" && HOSTKVM_TCG_THREAD=multi HOSTKVM_STALL=60 HOSTKVM_RETRY_HANG=4 HOSTKVM_TIMEOUT=600 \
     HOSTKVM_GUEST_SHUTDOWN=platform \
     "$top/tests/hostkvm/nested.sh" --writable "$build" -- ctest --output-on-failure -L '^linux$' \
     -E '^linux_test_pair_ci$')
  # The protected Linux pair, once: under dirty logging the platform loses a guest in about one
  # run in three (docs/linux-guests.md), and CI has no time for tries until one passes. A failure
  # of the test fails CI; the nested machine's own failure (status 126) is reported, loudly, and
  # leaves the pair unproven for this run.
  echo "tests: a protected Linux pair on real KVM, nested: ctest -R '^linux_test_pair_ci$'"
  pair_status=0
  (cd "$build" && HOSTKVM_TCG_THREAD=multi HOSTKVM_STALL=60 HOSTKVM_RETRY_HANG=0 HOSTKVM_TIMEOUT=600 \
     HOSTKVM_GUEST_SHUTDOWN=platform \
     "$top/tests/hostkvm/nested.sh" --writable "$build" -- ctest --output-on-failure -R '^linux_test_pair_ci$') ||
    pair_status=$?
  case $pair_status in
  0) ;;
  126) echo "tests: WARNING: the nested machine failed under the protected Linux pair (the platform, not colod:" \
            "see above); the pair was not proven in this run" ;;
  *) echo "tests: the protected Linux pair failed (status $pair_status)"; exit 1 ;;
  esac
  echo "tests: real KVM, nested: passed"
fi

[ "${sanitizers_done:-no}" = yes ] || sanitizer_steps
echo "tests: all passed"
