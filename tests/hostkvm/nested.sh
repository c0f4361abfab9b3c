#!/bin/bash
# Runs a command against a genuine /dev/kvm on a host that has none: Debian's kernel booted under
# QEMU's TCG (which emulates AMD SVM) loads kvm_amd; the command runs inside, chrooted into this
# host's root filesystem (shared read-only over 9p), with the folders given by --writable shared
# writable at their own paths. The command's exit status is this script's.
#
#   tests/hostkvm/nested.sh [--writable DIR]... [--env NAME=VALUE]... [--] COMMAND [ARG]...
#
# Inside: COLOD_TEST_BACKEND=kvm, HOME=/tmp, tmpfs on /tmp, /run, /var/tmp and /dev/shm, the
# current folder as here. The command's output is streamed to stdout; the L1 kernel's serial log
# is kept as $HOSTKVM_DIR/last/serial.log.
#
# Exit status: the command's own; 124 when the run timed out; 125 when the nested machine could
# not be set up (no kvm_amd, no /dev/kvm, no share); 126 when the nested machine itself failed:
# the L1 kernel hung or crashed (RCU stall, soft lockup, panic, double fault), or QEMU's emulated
# SVM ran a nested guest on the L1 kernel's own state (init.sh's EMULATOR FAULT). That is not a
# colod failure and the message says so.
#
# Environment: HOSTKVM_DIR (cache and run folder, default build/hostkvm), HOSTKVM_MEM (MiB,
# default 4096), HOSTKVM_SMP (default 2), HOSTKVM_TIMEOUT (seconds, default 1800), HOSTKVM_STALL
# (seconds without the L1 kernel's sign of life before it counts as hung, default 120),
# HOSTKVM_TCG_THREAD (single or multi, default single: see below), HOSTKVM_APPEND (more kernel
# parameters), HOSTKVM_RETRY_HANG (default 1: how many more tries, each said loudly, after the
# nested machine itself failed; 0 for none), HOSTKVM_KEEP_KEYS (default 1; 0 leaves out the idle
# VMs of kvm_keeper.py), HOSTKVM_GUEST_SHUTDOWN (platform: a nested guest's triple fault also
# counts as the nested machine's failure, for runs whose guests never triple-fault on purpose;
# init.sh says why).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
dir=${HOSTKVM_DIR:-$top/build/hostkvm}
mem=${HOSTKVM_MEM:-4096}
smp=${HOSTKVM_SMP:-2}
limit=${HOSTKVM_TIMEOUT:-1800}
stall=${HOSTKVM_STALL:-120}
# One TCG thread for both vCPUs: with thread=multi the L1 kernel stopped for good 4 times in
# about 30 `ctest -L kvm` runs, silently, both vCPUs spinning with interrupts off in
# asm_exc_int3 and __schedule (most likely kernel text patching of a static key, which KVM flips
# as VMs come and go, racing in multi-threaded TCG); with thread=single, not once in about 40
# runs, and each run was faster on a 2-core host.
tcg_thread=${HOSTKVM_TCG_THREAD:-single}
# kvm_amd without virtual GIF: QEMU's TCG now and then leaves a nested guest running the L1
# kernel's own code after VMRUN (init.sh's EMULATOR FAULT; docs/architecture.md), less often
# without it as measured (Linux boots under multi-threaded TCG: 3 of 13 with vGIF, 1 of 22
# without). init.sh passes the command line's kvm_amd.* words to the module; HOSTKVM_APPEND's
# come later and win.
kvm_amd_params="kvm_amd.vgif=0"
shutdown_param=""
case ${HOSTKVM_GUEST_SHUTDOWN:-} in
"") ;;
platform) shutdown_param="hostkvm_guest_shutdown=platform" ;;
*) echo "hostkvm: HOSTKVM_GUEST_SHUTDOWN must be empty or platform" >&2; exit 125 ;;
esac

say() { echo "hostkvm: $*" >&2; }
die() { say "$*"; exit 125; }

writable=()
envs=()
while [ $# -gt 0 ]; do
    case $1 in
    --writable) writable+=("$(cd "$2" && pwd)"); shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (usage: nested.sh [--writable DIR]... [--env N=V]... [--] COMMAND...)" ;;
    *) break ;;
    esac
done
# Inside, /tmp, /run, /var/tmp and /dev/shm are fresh tmpfs mounts: a checkout under one of them
# would be hidden, so it is shared too (writable: the shares are all read-write).
case $top/ in
/tmp/* | /run/* | /var/tmp/* | /dev/shm/*) writable=("$top" "${writable[@]}") ;;  # first: the others go on top
esac
[ $# -gt 0 ] || die "no command given (usage: nested.sh [--writable DIR]... [--env N=V]... [--] COMMAND...)"
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and exports / to the nested machine)"

# --- what it needs from Debian -----------------------------------------------------------------
need=""
for p in qemu-system-x86 busybox-static cpio kmod socat; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
    say "installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# --- the L1 kernel and initramfs, built once per kernel version ---------------------------------
kernel_version() {
    apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { sub("linux-image-", "", $2); print $2; exit }'
}
kv=$(kernel_version)
if [ -z "$kv" ]; then
    apt-get update -qq
    kv=$(kernel_version)
fi
[ -n "$kv" ] || die "cannot resolve the kernel version behind linux-image-amd64 (apt-cache depends)"
kdir=$dir/kernel-$kv
mkdir -p "$dir"
if [ ! -f "$kdir/initrd.cpio" ] || [ "$here/init.sh" -nt "$kdir/initrd.cpio" ] || [ "$0" -nt "$kdir/initrd.cpio" ]; then
    say "preparing the L1 kernel $kv and its initramfs in $kdir"
    rm -rf "$kdir.tmp" && mkdir -p "$kdir.tmp"
    mkdir -p "$dir/debs"
    if ! ls "$dir/debs/linux-image-${kv}_"*.deb >/dev/null 2>&1; then
        (cd "$dir/debs" && apt-get download "linux-image-$kv" >/dev/null 2>&1) ||
            die "apt-get download linux-image-$kv failed"
    fi
    dpkg-deb -x "$dir/debs/linux-image-${kv}_"*.deb "$kdir.tmp/kroot"  # extracted, never installed
    depmod -b "$kdir.tmp/kroot" "$kv"
    mkdir -p "$kdir.tmp/initrd"/{bin,dev,proc,sys,tmp,host,lib/modules}
    cp /bin/busybox "$kdir.tmp/initrd/bin/"
    cp "$here/init.sh" "$kdir.tmp/initrd/init"
    chmod +x "$kdir.tmp/initrd/init"
    # KVM, the 9p share over virtio-pci, and what network tests inside need.
    : > "$kdir.tmp/initrd/lib/modules/order"
    for m in kvm_amd 9p 9pnet_virtio virtio_pci veth bridge tun; do
        modprobe -d "$kdir.tmp/kroot" -S "$kv" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
    done | awk '!seen[$0]++' | while read -r ko; do
        name=$(basename "$ko" .ko)
        cp "$ko" "$kdir.tmp/initrd/lib/modules/$name.ko"
        echo "$name" >> "$kdir.tmp/initrd/lib/modules/order"
    done
    grep -qx kvm-amd "$kdir.tmp/initrd/lib/modules/order" || die "kvm-amd.ko is not in linux-image-$kv"
    (cd "$kdir.tmp/initrd" && find . | cpio -o -H newc 2>/dev/null) > "$kdir.tmp/initrd.cpio"
    rm -rf "$kdir"
    mkdir -p "$kdir"
    mv "$kdir.tmp/kroot/boot/vmlinuz-$kv" "$kdir/vmlinuz"
    mv "$kdir.tmp/initrd.cpio" "$kdir/initrd.cpio"
    rm -rf "$kdir.tmp"
fi

# --- the job -----------------------------------------------------------------------------------
run=$dir/last
rm -rf "$run" && mkdir -p "$run"
printf '%s\n' "${writable[@]}" > "$run/writable"
{
    echo '#!/bin/sh'
    echo "# written by tests/hostkvm/nested.sh"
    echo "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "export HOME=/tmp COLOD_TEST_BACKEND=kvm COLOD_TEST_TIME_SCALE=${COLOD_TEST_TIME_SCALE:-20} CI=${CI:-}"
    # Tests that meet a known defect of this platform (docs/architecture.md) ask for this.
    echo "export COLOD_NESTED_TCG=1"
    for e in "${envs[@]}"; do printf 'export %q\n' "$e"; done
    # Two idle VMs hold KVM's per-VM static keys on, so the job's VMs never patch the L1
    # kernel's text (kvm_keeper.py says why).
    [ "${HOSTKVM_KEEP_KEYS:-1}" = 0 ] || printf 'python3 %q || exit 125\n' "$here/kvm_keeper.py"
    printf 'cd %q || exit 125\n' "$PWD"
    printf '%q ' "$@"
    printf '> %q 2>&1\n' "$run/output.log"
} > "$run/job.sh"

# Serial log patterns that mean the nested machine itself is in trouble, not colod: the L1 kernel
# hung or crashed, or QEMU's emulated SVM ran a guest on the L1 kernel's state (init.sh watches
# for that: EMULATOR FAULT).
hang_re='rcu: INFO: rcu_.* detected stalls|rcu_.* self-detected stall|watchdog: BUG: soft lockup|blocked for more than [0-9]+ seconds|Kernel panic|general protection fault|BUG: unable to handle|PANIC: double fault|HOSTKVM: EMULATOR FAULT|HOSTKVM: GUEST SHUTDOWN'

boot() {
    local args=(
        -accel "tcg,thread=$tcg_thread" -cpu max -m "$mem" -smp "$smp"
        -nodefaults -no-user-config -display none -no-reboot
        -kernel "$kdir/vmlinuz" -initrd "$kdir/initrd.cpio"
        -append "console=ttyS0 loglevel=4 panic=-1 nokaslr $kvm_amd_params hostkvm_job=$run $shutdown_param ${HOSTKVM_APPEND:-}"
        -serial "file:$run/serial.log"
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$run,mount_tag=jobshare,security_model=none,multidevs=remap"
    )
    local i=0 w
    for w in "${writable[@]}"; do
        args+=(-virtfs "local,path=$w,mount_tag=rw$i,security_model=none,multidevs=remap")
        i=$((i + 1))
    done
    : > "$run/output.log"
    : > "$run/serial.log"
    rm -f "$run/alive" "$run/monitor.sock"
    tail -n +1 -F "$run/output.log" 2>/dev/null &
    local tailer=$!
    local start=$SECONDS timed_out=no stalled=""
    qemu-system-x86_64 "${args[@]}" -monitor "unix:$run/monitor.sock,server=on,wait=off" \
        </dev/null >"$run/qemu.log" 2>&1 &
    local qemu=$!
    # Watch the run: the time limit, and the L1 kernel's sign of life (init.sh writes
    # $run/alive every 5 s once the job runs; a kernel that stops scheduling stops writing it).
    while kill -0 "$qemu" 2>/dev/null; do
        sleep 2
        if [ $((SECONDS - start)) -ge "$limit" ]; then
            timed_out=yes
            break
        fi
        if [ -f "$run/alive" ]; then
            local age=$(($(date +%s) - $(stat -c %Y "$run/alive")))
            if [ "$age" -ge "$stall" ]; then
                stalled="no sign of life from the L1 kernel for ${age}s (its scheduler or timer stopped)"
                break
            fi
        fi
    done
    if kill -0 "$qemu" 2>/dev/null; then
        # Keep what QEMU knows of the stuck machine before stopping it.
        if command -v socat >/dev/null && [ -S "$run/monitor.sock" ]; then
            printf 'info cpus\ninfo registers -a\n' | timeout 10 socat - "UNIX-CONNECT:$run/monitor.sock" \
                > "$run/monitor.log" 2>&1 || true
        fi
        # Name the kernel functions the vCPUs were in (nokaslr: System.map's addresses hold).
        if [ -f "$run/monitor.log" ] && [ -s "$run/kallsyms" ]; then
            grep -o 'RIP=[0-9a-f]*' "$run/monitor.log" | cut -d= -f2 | python3 -c '
import bisect, sys
syms = sorted((int(a, 16), n) for a, _, n in (l.split()[:3] for l in open(sys.argv[1])))
syms = syms or [(0, "?")]
for rip in sys.stdin.read().split():
    i = bisect.bisect_right(syms, (int(rip, 16), "\uffff")) - 1
    print(f"RIP {rip}: {syms[i][1]}+{int(rip, 16) - syms[i][0]:#x}")' "$run/kallsyms" >> "$run/monitor.log"
        fi
        kill "$qemu" 2>/dev/null || true
        sleep 1
        kill -9 "$qemu" 2>/dev/null || true
    fi
    wait "$qemu" 2>/dev/null || true  # its status says nothing: the result line does
    sleep 0.2  # let tail print the last lines it has read
    kill "$tailer" 2>/dev/null || true
    wait "$tailer" 2>/dev/null || true
    elapsed=$((SECONDS - start))
    if [ "$timed_out" = yes ]; then
        status=124
    else
        status=$(sed -n 's/^HOSTKVM: status \([0-9]*\) .*/\1/p' "$run/serial.log" | tail -n 1)
    fi
    hang=$(grep -E -m 3 "$hang_re" "$run/serial.log" || true)
    [ -z "$stalled" ] || hang="$stalled${hang:+
$hang}"
}

show_serial() {
    say "---- L1 serial log ($run/serial.log), last 60 lines ----"
    tail -n 60 "$run/serial.log" >&2
    [ -s "$run/qemu.log" ] && { say "---- qemu ----"; cat "$run/qemu.log" >&2; }
    say "----"
}

tries=$((1 + ${HOSTKVM_RETRY_HANG:-1}))
for try in $(seq 1 "$tries"); do
    say "booting the nested KVM host (kernel $kv, ${smp} vCPUs, ${mem} MiB, TCG) for: $*"
    boot
    # A run that passed stands, whatever the L1 kernel logged on the way.
    if [ -n "$hang" ] && [ "${status:-}" != 0 ]; then
        say "THE NESTED MACHINE FAILED (the L1 kernel or QEMU's emulation of it, not colod) after ${elapsed}s:"
        echo "$hang" | sed 's/^/hostkvm:   /' >&2
        show_serial
        if [ "$try" -lt "$tries" ]; then
            say "trying once more after the nested machine's failure (try $((try + 1)) of $tries)"
            continue
        fi
        exit 126
    fi
    case ${status:-} in
    124) say "timed out after ${limit}s (HOSTKVM_TIMEOUT)"; show_serial; exit 124 ;;
    125) say "the nested machine could not be set up"; show_serial; exit 125 ;;
    "") say "the nested machine stopped without reporting a status"; show_serial; exit 125 ;;
    esac
    say "command exited $status after ${elapsed}s on the nested KVM"
    exit "$status"
done
