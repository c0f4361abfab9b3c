#!/bin/busybox sh
# /init of the nested-KVM initramfs (tests/hostkvm/nested.sh builds it): loads kvm_amd, mounts
# the host's root read-only and the job share writable over 9p, runs the job chrooted into the
# host's root, and reports its exit status on the serial console and in the share.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "HOSTKVM: $*"; }
finish() {
    say "status $1 at uptime $(up)s"
    sync
    poweroff -f
}
say "init at uptime $(up)s, kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpus"
# Module parameters from the kernel command line (`kvm_amd.vgif=0`: nested.sh's
# HOSTKVM_APPEND), as modprobe would pass them.
params() {
    for word in $(cat /proc/cmdline); do
        case $word in "$(echo "$1" | tr - _)".*=*) echo "${word#*.}" ;; esac
    done
}
for m in $(cat /lib/modules/order); do
    # shellcheck disable=SC2046 # one word per parameter
    insmod "/lib/modules/$m.ko" $(params "$m") 2>/tmp/insmod.err || {
        say "insmod $m failed: $(cat /tmp/insmod.err)"
        case $m in kvm|kvm-amd|9p|9pnet_virtio) say "L1 setup failed: cannot load $m"; dmesg | tail -n 20; finish 125 ;; esac
    }
done
if [ ! -c /dev/kvm ]; then
    say "L1 setup failed: /dev/kvm is absent after loading kvm_amd"
    dmesg | grep -i -E 'kvm|svm' | tail -n 20
    finish 125
fi
ip link set lo up || say "cannot bring up the loopback interface"
say "kvm_amd loaded at uptime $(up)s: npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)" \
    "vgif=$(cat /sys/module/kvm_amd/parameters/vgif 2>/dev/null)"

# QEMU's TCG, which emulates SVM for this kernel, now and then leaves a nested (L2) guest running
# this kernel's own code: the instruction after VMRUN in kvm_amd's __svm_vcpu_run, with this
# kernel's registers and the guest's nested page tables. The guest then takes a nested page fault
# there forever (its own code never runs again), or this kernel takes a double fault. That is the
# platform, not the VMM: watch for a VM exit whose guest RIP lies in __svm_vcpu_run (a guest's
# own code is never there) and end the run at the first one, so nested.sh can say so and retry.
watch_emulator() {
    tracing=/sys/kernel/tracing
    mount -t tracefs nodev "$tracing" 2>/dev/null
    range=$(sort /proc/kallsyms | awk '$3 == "__svm_vcpu_run" { start = $1; next }
                                      start != "" { print "0x" start, "0x" $1; exit }')
    if [ -z "$range" ] || [ ! -d "$tracing/events/kvm/kvm_exit" ]; then
        say "cannot watch for the emulator's VMRUN fault (no __svm_vcpu_run or no kvm_exit event)"
        return
    fi
    set -- $range
    filter="guest_rip >= $1 && guest_rip < $2"
    # hostkvm_guest_shutdown=platform (nested.sh's HOSTKVM_GUEST_SHUTDOWN): a nested guest's
    # shutdown (triple fault, SVM exit code 0x7f) counts as the platform's too. For runs whose
    # guests never triple-fault on purpose (the Linux guests): under dirty logging the emulated
    # MMU loses a guest's own page tables now and then (docs/linux-guests.md).
    case " $(cat /proc/cmdline) " in
    *" hostkvm_guest_shutdown=platform "*) filter="($filter) || exit_reason == 127" ;;
    esac
    echo "$filter" > "$tracing/events/kvm/kvm_exit/filter" &&
        echo 1 > "$tracing/events/kvm/kvm_exit/enable" ||
        { say "cannot watch for the emulator's VMRUN fault (the kvm_exit filter was refused)"; return; }
    (
        line=$(head -n 1 "$tracing/trace_pipe")
        case $line in
        *"reason shutdown"*)
            say "GUEST SHUTDOWN: a nested guest triple-faulted; this run counts that as the platform's"
            say "  (HOSTKVM_GUEST_SHUTDOWN=platform: QEMU's emulated SVM loses guests' page tables under"
            say "  dirty logging, docs/linux-guests.md)"
            ;;
        *)
            say "EMULATOR FAULT: a nested guest ran this kernel's own code after VMRUN"
            say "  (guest RIP in __svm_vcpu_run, $1..$2): QEMU's TCG mixed the L1 and L2 states; not colod"
            ;;
        esac
        say "  $line"
        finish 126
    ) &
}
watch_emulator
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /host ||
    { say "L1 setup failed: cannot mount the host's root"; finish 125; }
job=$(sed -n 's/.*hostkvm_job=\([^ ]*\).*/\1/p' /proc/cmdline)
mount --bind /dev /host/dev
mount -t devpts devpts /host/dev/pts 2>/dev/null
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mkdir -p /host/dev/shm
for d in /tmp /run /var/tmp /dev/shm; do mount -t tmpfs tmpfs "/host$d"; done
# The shares go on top of the tmpfs mounts (a job folder may live under /tmp); a mount point
# that a tmpfs hides is made there.
mkdir -p "/host$job" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=524288,cache=none jobshare "/host$job" ||
    { say "L1 setup failed: cannot mount the job share at $job"; finish 125; }
# Writable folders the job asked for (its build tree), shared like the job folder.
i=0
while read -r dir; do
    [ -n "$dir" ] || continue
    mkdir -p "/host$dir" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,rw,msize=524288,cache=none "rw$i" "/host$dir" ||
        { say "L1 setup failed: cannot mount $dir writable"; finish 125; }
    i=$((i + 1))
done < "/host$job/writable"
# The kernel's text symbols, so that the host can name where a stuck vCPU was (nokaslr).
grep ' [tT] ' /proc/kallsyms > "/host$job/kallsyms" 2>/dev/null
# A sign of life for the host: nested.sh treats a stale one as a hung L1 kernel.
(while :; do up > "/host$job/alive"; sleep 5; done) &
say "running the job at uptime $(up)s"
chroot /host /bin/sh "$job/job.sh"
rc=$?
finish $rc
