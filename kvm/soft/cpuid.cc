// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/cpuid.h"

#include <cpuid.h>

#include <array>
#include <cstring>

namespace colod::kvm::soft {

namespace {

constexpr uint32_t bit(unsigned n) { return 1u << n; }

kvm_cpuid_entry2 entry(uint32_t function, uint32_t index, uint32_t flags, uint32_t eax, uint32_t ebx, uint32_t ecx,
                       uint32_t edx) {
    kvm_cpuid_entry2 e{};
    e.function = function;
    e.index = index;
    e.flags = flags;
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = edx;
    return e;
}

uint32_t chars(const char* four) {
    uint32_t value = 0;
    std::memcpy(&value, four, 4);
    return value;
}

std::vector<kvm_cpuid_entry2> build_supported() {
    // The vendor is the host's, as KVM reports it; everything else is what the interpreter
    // implements, independent of the host.
    unsigned max_leaf = 0, vendor_ebx = 0, vendor_ecx = 0, vendor_edx = 0;
    __cpuid(0, max_leaf, vendor_ebx, vendor_ecx, vendor_edx);
    if (vendor_ebx == 0) {
        vendor_ebx = chars("Genu");
        vendor_edx = chars("ineI");
        vendor_ecx = chars("ntel");
    }

    std::vector<kvm_cpuid_entry2> table;
    table.push_back(entry(0, 0, 0, 7, vendor_ebx, vendor_ecx, vendor_edx));

    // Family 6, model 0x3a (a 64-bit part without the vector extensions it would imply on real
    // silicon; guests must go by the feature bits, not by the model).
    uint32_t leaf1_eax = (6u << 8) | (0xau << 4) | (0x3u << 16);
    uint32_t leaf1_ebx = (8u << 8) | (1u << 16);  // CLFLUSH line 8 quadwords, one logical CPU
    uint32_t leaf1_ecx = bit(23)                  // POPCNT
                         | bit(31);  // hypervisor present
    // TSC-deadline is emulated (KVM_CAP_TSC_DEADLINE_TIMER) but, as in KVM, left out of the
    // supported table: the VMM sets CPUID.1:ECX[24] itself.
    uint32_t leaf1_edx = bit(2)                                  // DE
                         | bit(3)                                // PSE
                         | bit(4)                                // TSC
                         | bit(5)                                // MSR
                         | bit(6)                                // PAE
                         | bit(9)                                // APIC
                         | bit(13)                               // PGE
                         | bit(15)                               // CMOV
                         | bit(16)                               // PAT
                         | bit(19);                              // CLFSH
    table.push_back(entry(1, 0, 0, leaf1_eax, leaf1_ebx, leaf1_ecx, leaf1_edx));
    // Leaf 7: only ERMS (a hint that REP MOVSB/STOSB are fast, which holds here too).
    table.push_back(entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0, bit(9), 0, 0));

    // KVM's paravirtual leaves: the signature, and no paravirtual features.
    table.push_back(entry(0x40000000, 0, 0, 0x40000001, chars("KVMK"), chars("VMKV"), chars("M\0\0\0")));
    table.push_back(entry(0x40000001, 0, 0, 0, 0, 0, 0));

    table.push_back(entry(0x80000000, 0, 0, 0x80000008, 0, 0, 0));
    uint32_t ext_ecx = bit(0)  // LAHF/SAHF in 64-bit mode
                       | bit(5);  // LZCNT (ABM)
    uint32_t ext_edx = bit(11)    // SYSCALL/SYSRET
                       | bit(20)  // NX
                       | bit(26)  // 1 GiB pages
                       | bit(27)  // RDTSCP
                       | bit(29);  // long mode
    table.push_back(entry(0x80000001, 0, 0, 0, 0, ext_ecx, ext_edx));
    static const char brand[49] = "colod software x86-64 CPU                       ";
    for (uint32_t i = 0; i < 3; ++i) {
        uint32_t words[4];
        std::memcpy(words, brand + 16 * i, 16);
        table.push_back(entry(0x80000002 + i, 0, 0, words[0], words[1], words[2], words[3]));
    }
    // 40 physical address bits, 48 virtual.
    table.push_back(entry(0x80000008, 0, 0, 0x3028, 0, 0, 0));
    return table;
}

// The MSRs colod must save (KVM lists the ones in SREGS — EFER, FS/GS base, APIC base — there
// instead, so they are not here, but GET/SET_MSRS accept them too).
constexpr std::array<uint32_t, 13> k_msr_index_list = {
    0x174,       // IA32_SYSENTER_CS
    0x175,       // IA32_SYSENTER_ESP
    0x176,       // IA32_SYSENTER_EIP
    0xc0000081,  // STAR
    0xc0000083,  // CSTAR
    0xc0000102,  // KERNEL_GS_BASE
    0xc0000084,  // FMASK
    0xc0000082,  // LSTAR
    0x10,        // IA32_TSC
    0x277,       // IA32_PAT
    0xc0000103,  // TSC_AUX
    0x6e0,       // IA32_TSC_DEADLINE
    0x1a0,       // IA32_MISC_ENABLE
};

}  // namespace

const std::vector<kvm_cpuid_entry2>& supported_cpuid() {
    static const std::vector<kvm_cpuid_entry2> table = build_supported();
    return table;
}

std::span<const uint32_t> msr_index_list() { return k_msr_index_list; }

bool CpuidTable::same_as(std::span<const kvm_cpuid_entry2> entries) const {
    if (entries.size() != m_entries.size())
        return false;
    for (size_t i = 0; i < entries.size(); ++i) {
        const auto& a = entries[i];
        const auto& b = m_entries[i];
        if (a.function != b.function || a.index != b.index || a.flags != b.flags || a.eax != b.eax ||
            a.ebx != b.ebx || a.ecx != b.ecx || a.edx != b.edx)
            return false;
    }
    return true;
}

void CpuidTable::lookup(uint32_t leaf, uint32_t subleaf, uint32_t out[4]) const {
    for (const auto& e : m_entries) {
        if (e.function != leaf)
            continue;
        if ((e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) && e.index != subleaf)
            continue;
        out[0] = e.eax;
        out[1] = e.ebx;
        out[2] = e.ecx;
        out[3] = e.edx;
        return;
    }
    out[0] = out[1] = out[2] = out[3] = 0;
}

bool CpuidTable::has_tsc_deadline() const {
    uint32_t regs[4];
    lookup(1, 0, regs);
    return regs[2] & k_cpuid1_ecx_tsc_deadline;
}

bool vendor_is_amd() {
    static const bool amd = [] {
        const auto& leaf0 = supported_cpuid().front();
        return leaf0.ebx == chars("Auth") && leaf0.edx == chars("enti") && leaf0.ecx == chars("cAMD");
    }();
    return amd;
}

}  // namespace colod::kvm::soft
