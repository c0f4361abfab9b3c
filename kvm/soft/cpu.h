// SPDX-License-Identifier: GPL-2.0-or-later
// The x86-64 interpreter of the software backend: one vCPU's instruction execution.
//
// The interpreter knows the architecture (decode, execute, flags, paging, exceptions and
// interrupt delivery through the IDT, privilege levels) and nothing of the machine around it:
// memory, I/O, MSRs it does not own and interrupt sources are reached through CpuBus, which the
// software VM (kvm/soft/soft_vm.*) implements. The split mirrors KVM's: the CPU here, LAPIC,
// IOAPIC, PIC, PIT and kvm_run in the VM.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <memory>
#include <string>

namespace colod::kvm::soft {

// Architectural state of one vCPU, kept in KVM's own structs so that the software backend's
// GET/SET ioctls are plain copies and a state saved from real KVM loads here and back.
struct CpuState {
    kvm_regs regs{};    // general registers, rip, rflags
    kvm_sregs sregs{};  // segments, gdt/idt, cr0/2/3/4/8, efer, apic_base
    // MSRs the interpreter itself gives meaning to (architectural, not APIC):
    uint64_t star = 0, lstar = 0, cstar = 0, fmask = 0, kernel_gs_base = 0;
    uint64_t sysenter_cs = 0, sysenter_esp = 0, sysenter_eip = 0;
    uint64_t tsc_aux = 0;
    uint64_t pat = 0x0007040600070406ull;
    uint64_t xcr0 = 1;
    // 1 while the instruction after STI or MOV SS executes: no interrupt is taken before it
    // (kvm_vcpu_events.interrupt.shadow uses the same encoding: KVM_X86_SHADOW_INT_MOV_SS = 1,
    // KVM_X86_SHADOW_INT_STI = 2).
    uint8_t interrupt_shadow = 0;
};

enum class Access : uint8_t { Read, Write, Execute };

// What a bus access did.
enum class BusResult : uint8_t {
    Done,  // completed inside the VM (RAM, LAPIC, IOAPIC, PIC, PIT ...)
    Exit,  // must leave KVM_RUN to userspace (port I/O or MMIO of a userspace device)
};

// The machine as the CPU sees it. Implemented by the software VM. All addresses are guest
// physical; the CPU does the virtual-to-physical translation itself.
class CpuBus {
public:
    virtual ~CpuBus() = default;

    // Host address of the 4 KiB guest page that contains `gpa` if a RAM slot covers it, else
    // nullptr (then it is MMIO). The pointer is to the start of the page. For Access::Write
    // the page is marked dirty in the slot's dirty log (when logging is on), so the CPU must
    // ask with Write for every page it writes, at least once per run() slice.
    virtual uint8_t* ram_page(uint64_t gpa, Access access) = 0;

    // MMIO where no RAM is. len is 1, 2, 4 or 8. In-kernel devices complete at once (Done);
    // anything else becomes a KVM_EXIT_MMIO (Exit), recorded by the bus.
    virtual BusResult mmio_read(uint64_t gpa, void* data, uint32_t len) = 0;
    virtual BusResult mmio_write(uint64_t gpa, const void* data, uint32_t len) = 0;

    // Port I/O, size 1, 2 or 4. In-kernel devices (PIC 0x20/0x21/0xa0/0xa1, PIT 0x40-0x43,
    // 0x61 ...) are Done; the rest becomes KVM_EXIT_IO (Exit), recorded by the bus.
    virtual BusResult pio_in(uint16_t port, void* data, uint32_t size) = 0;
    virtual BusResult pio_out(uint16_t port, const void* data, uint32_t size) = 0;

    // MSRs the interpreter does not own (IA32_APIC_BASE, TSC_DEADLINE, MISC_ENABLE, the x2APIC
    // range, anything unknown). false means the MSR does not exist: the CPU raises #GP(0).
    virtual bool rdmsr(uint32_t index, uint64_t& value) = 0;
    virtual bool wrmsr(uint32_t index, uint64_t value) = 0;

    // One CPUID leaf from the table installed by KVM_SET_CPUID2 (eax, ebx, ecx, edx).
    virtual void cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) = 0;

    // The vector of the highest-priority interrupt the LAPIC would deliver now, or -1. The CPU
    // asks only when RFLAGS.IF = 1 and no interrupt shadow is active.
    virtual int pending_interrupt() = 0;
    // The CPU is delivering `vector` now: the LAPIC moves it from IRR to ISR.
    virtual void acknowledge_interrupt(int vector) = 0;

    // CR8 is the LAPIC's task priority (TPR[7:4]).
    virtual uint64_t read_cr8() = 0;
    virtual void write_cr8(uint64_t value) = 0;

    // The host TSC, which the guest reads with RDTSC / RDTSCP.
    virtual uint64_t tsc() = 0;
};

enum class StopReason : uint8_t {
    Budget,    // executed the whole instruction budget
    Halt,      // HLT retired; RIP points past it
    IoExit,    // a port access returned Exit; the instruction retired except an IN's register
               // write, which complete_pio_in() finishes
    MmioExit,  // an MMIO access returned Exit. A write has retired; a read has NOT: RIP still
               // points at the instruction, which runs again after complete_mmio_read()
    Shutdown,  // triple fault
    Internal,  // something the interpreter cannot do (unsupported instruction, string I/O to
               // userspace ...): `detail` says what, with RIP and the instruction bytes
};

struct Stop {
    StopReason reason = StopReason::Budget;
    uint64_t executed = 0;  // instructions retired in this run() call
    std::string detail;     // for Internal
};

class Cpu {
public:
    Cpu();
    ~Cpu();
    Cpu(const Cpu&) = delete;
    Cpu& operator=(const Cpu&) = delete;

    // Runs up to `budget` instructions. Before each instruction (and after any that can change
    // interrupt deliverability: STI, POPF, IRETQ, MOV CR8, WRMSR, OUT, MMIO writes) the CPU
    // delivers a pending interrupt if RFLAGS.IF = 1 and no shadow is active. It also checks for
    // a pending interrupt at the start of every call, so the VM can raise interrupts from other
    // threads between slices. Exceptions are delivered through the IDT (#DE, #UD, #GP, #PF with
    // CR2, #DF ...); a fault while delivering #DF is a triple fault (Shutdown).
    Stop run(CpuState& state, CpuBus& bus, uint64_t budget);

    // Finishes an IN that exited to userspace: writes `data` (size 1, 2 or 4 bytes, as the
    // exit recorded) into AL / AX / EAX (EAX zero-extends into RAX).
    void complete_pio_in(CpuState& state, const void* data, uint32_t size);

    // Supplies the result of an MMIO read that exited to userspace. The next run() re-executes
    // the instruction, whose read of `gpa` consumes this data instead of asking the bus.
    void complete_mmio_read(uint64_t gpa, const void* data, uint32_t len);

    // Drops cached translations. The VM calls this after SET_SREGS / SET_REGS and whenever
    // memory slots change.
    void flush_tlb();

private:
    struct Impl;
    std::unique_ptr<Impl> m_impl;
};

}  // namespace colod::kvm::soft
