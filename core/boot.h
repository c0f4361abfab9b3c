// SPDX-License-Identifier: GPL-2.0-or-later
// Direct boot of an ELF64 guest into long mode (the contract is guests/abi.h).
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "base/result.h"

namespace colod::core {

class GuestMemory;
struct ElfImage;

struct BootState {
    kvm_regs regs{};
    kvm_sregs sregs{};
};

// Writes the boot area (GDT, identity page tables, boot info) into guest RAM and returns the
// bootstrap vCPU's registers for entry. `sregs_template` is the vCPU's current KVM_GET_SREGS
// (so fields colod does not set keep KVM's defaults, e.g. apic_base).
base::Result<BootState> setup_direct_boot(GuestMemory& memory, const ElfImage& image, uint32_t vcpus,
                                          std::string_view cmdline, const kvm_sregs& sregs_template);

// Copies `bytes` into guest RAM at `gpa`; an error naming `what` if they do not fit.
base::Result<void> write_guest(GuestMemory& memory, uint64_t gpa, std::span<const std::byte> bytes,
                               std::string_view what);

// Writes the boot page tables (an identity map of 0 to max(RAM end, 4 GiB) in 2 MiB pages, the
// MMIO hole uncached) into the boot area below 1 MiB; returns the PML4's address (for CR3).
base::Result<uint64_t> write_identity_page_tables(GuestMemory& memory);

// The special registers of a vCPU entering 64-bit code: flat code and data segments with the
// given selectors of a GDT at gdt_base, paging on with the boot page tables, interrupts' IDT
// empty. Fields colod does not set keep `sregs_template`'s values (KVM's defaults).
kvm_sregs long_mode_sregs(const kvm_sregs& sregs_template, uint16_t code_selector, uint16_t data_selector,
                          uint64_t gdt_base, uint16_t gdt_limit);

// Whether the LAPIC's TSC-deadline mode may be offered to the guest. KVM emulates it whenever
// KVM_CAP_TSC_DEADLINE_TIMER says so, yet leaves the CPUID bit out of KVM_GET_SUPPORTED_CPUID
// (the VMM is expected to add it).
enum class TscDeadline { Absent, Present };

// The CPUID table given to vCPU `id`: the host's supported table with the APIC ID filled in, the
// hypervisor bit set and, with TscDeadline::Present, CPUID.1:ECX.TSC_DEADLINE set. Of KVM's
// paravirtual features (leaf 0x40000001) only those whose state a checkpoint carries and that
// mean the same on the other host are offered (kvm_pv_features_kept).

// KVM paravirtual features offered to guests: kvmclock (both MSR sets, and its stable bit),
// no I/O delay, PV EOI, PV unhalt and IPIs, yielding, extended MSI destination IDs. Left out:
// asynchronous page faults (a fault in flight is host state no checkpoint carries: after a
// failover the guest task that waits for its completion would wait for ever), steal time and
// the TLB-flush hint built on it (host-specific figures KVM writes into guest RAM on every
// entry), poll control, the map-GPA-range and migration-control hypercalls.
inline constexpr uint32_t kvm_pv_features_kept =
    (1u << 0) | (1u << 1) | (1u << 3) | (1u << 6) | (1u << 7) | (1u << 11) | (1u << 13) | (1u << 15) | (1u << 24);

std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::span<const kvm_cpuid_entry2> supported, uint32_t id,
                                             TscDeadline tsc_deadline);

}  // namespace colod::core
