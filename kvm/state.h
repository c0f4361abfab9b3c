// SPDX-License-Identifier: GPL-2.0-or-later
// Plain structs holding every piece of KVM state colod saves and restores. They are KVM's own
// structs (fixed-width fields only), so capture and restore are plain copies; core/ turns them
// into versioned, endian-stable sections.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <vector>

namespace colod::kvm {

// One vCPU, everything KVM_GET_* returns for it.
struct VcpuState {
    kvm_regs regs{};
    kvm_sregs sregs{};
    // XSAVE area: KVM_CAP_XSAVE2 bytes (at least 4096), as 32-bit words like struct kvm_xsave.
    std::vector<uint32_t> xsave;
    kvm_xcrs xcrs{};
    kvm_debugregs debugregs{};
    kvm_vcpu_events events{};
    kvm_mp_state mp_state{};
    kvm_lapic_state lapic{};
    // The MSRs this vCPU can save (the index list filtered by what GET_MSRS accepts), in order.
    std::vector<kvm_msr_entry> msrs;
    uint32_t tsc_khz = 0;  // 0 when the kernel cannot report it
};

// The VM-wide devices KVM emulates in the kernel, and its clock.
struct VmState {
    kvm_pic_state pic_master{};
    kvm_pic_state pic_slave{};
    kvm_ioapic_state ioapic{};
    kvm_pit_state2 pit{};
    kvm_clock_data clock{};
};

}  // namespace colod::kvm
