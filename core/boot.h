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

// Whether the LAPIC's TSC-deadline mode may be offered to the guest. KVM emulates it whenever
// KVM_CAP_TSC_DEADLINE_TIMER says so, yet leaves the CPUID bit out of KVM_GET_SUPPORTED_CPUID
// (the VMM is expected to add it).
enum class TscDeadline { Absent, Present };

// The CPUID table given to vCPU `id`: the host's supported table with the APIC ID filled in, the
// hypervisor bit set and, with TscDeadline::Present, CPUID.1:ECX.TSC_DEADLINE set.
std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::span<const kvm_cpuid_entry2> supported, uint32_t id,
                                             TscDeadline tsc_deadline);

}  // namespace colod::core
