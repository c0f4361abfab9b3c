#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Keeps KVM's per-VM static keys still on the nested KVM host (tests/hostkvm/nested.sh runs it
before the job).

KVM turns some static keys on while any vCPU is in a given state and off when none is: a vCPU
whose local APIC is still software-disabled (every new one), a vCPU without an in-kernel APIC.
Each turn patches the L1 kernel's text (int3, then IPIs to every CPU), and under QEMU's
multi-threaded TCG that patching now and then hangs the L1 kernel for good (its CPUs left in
asm_exc_int3 and smp_call_function_many_cond). A test run starts and stops hundreds of VMs, so
hundreds of patchings. Two VMs created here and never run -- one with an in-kernel irqchip and
one vCPU (its APIC stays software-disabled), one without an irqchip and one vCPU -- hold both
keys on for the whole job, so the tests' VMs never turn them.

Creates the VMs, forks a child that holds them until it is killed (or the machine powers off),
and exits 0 once they exist; exits 1, saying why, when they cannot be made.
"""
import fcntl
import os
import signal
import sys

KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_CREATE_IRQCHIP = 0xAE60


def main():
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        held = [kvm]
        for with_irqchip in (True, False):
            vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
            held.append(vm)
            if with_irqchip:
                fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
            held.append(fcntl.ioctl(vm, KVM_CREATE_VCPU, 0))
    except OSError as error:
        print(f"kvm_keeper: cannot create the idle VMs: {error}", file=sys.stderr)
        return 1
    if os.fork() == 0:
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
