// SPDX-License-Identifier: GPL-2.0-or-later
// What the software backend tells the guest about the CPU: the KVM_GET_SUPPORTED_CPUID table,
// the per-vCPU table from KVM_SET_CPUID2, and the MSR index list.
//
// The table advertises exactly what the interpreter (cpu.h) executes: the general-purpose
// integer ISA of x86-64 with long mode, NX, SYSCALL, RDTSCP, 1 GiB pages, CMOV, POPCNT, LZCNT
// and the local APIC with TSC-deadline timer. No x87, MMX, SSE (any level), AVX, FXSR or
// XSAVE instructions (the interpreter raises #UD for them), no x2APIC, no SMEP/SMAP, no PCID,
// no performance monitoring. docs/soft-backend.md lists the bits.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <span>
#include <vector>

namespace colod::kvm::soft {

// KVM_MAX_CPUID_ENTRIES.
inline constexpr uint32_t k_max_cpuid_entries = 256;

// CPUID.1:ECX bit 24.
inline constexpr uint32_t k_cpuid1_ecx_tsc_deadline = 1u << 24;

const std::vector<kvm_cpuid_entry2>& supported_cpuid();

// True when the supported table's vendor (the host's) is AMD: KVM then behaves as SVM does
// (one interrupt-shadow bit, 32-bit SYSENTER MSRs), and so does the software backend.
bool vendor_is_amd();

// KVM_GET_MSR_INDEX_LIST: the MSRs worth saving that KVM_GET_MSRS / KVM_SET_MSRS accept.
std::span<const uint32_t> msr_index_list();

// The table a vCPU answers CPUID from (empty until KVM_SET_CPUID2, as in KVM: every leaf then
// reads as zeros).
class CpuidTable {
public:
    void assign(std::span<const kvm_cpuid_entry2> entries) { m_entries.assign(entries.begin(), entries.end()); }
    const std::vector<kvm_cpuid_entry2>& entries() const { return m_entries; }
    bool same_as(std::span<const kvm_cpuid_entry2> entries) const;

    // Looks up (leaf, subleaf) as KVM does: the subleaf matters only for entries flagged
    // KVM_CPUID_FLAG_SIGNIFCANT_INDEX; a leaf not in the table reads as zeros.
    void lookup(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) const;
    bool has_tsc_deadline() const;

private:
    std::vector<kvm_cpuid_entry2> m_entries;
};

}  // namespace colod::kvm::soft
