// SPDX-License-Identifier: GPL-2.0-or-later
// The kernel's (C) layout of the KVM structs that end in a flexible array.
//
// linux-libc-dev up to at least 6.1 (Debian bookworm) declares these arrays with
// __DECLARE_FLEX_ARRAY, which wraps them in a struct with an empty struct member. An empty
// struct has size 0 in C but 1 in C++, so in C++ `kvm_msrs::entries` sits at offset 16 instead
// of 8, `kvm_cpuid2::entries` at 12 instead of 8 and `kvm_msr_list::indices` at 8 instead of 4.
// The kernel reads the C layout. C++ code must therefore address the arrays through these
// helpers, never through the members, and size buffers with the kernel header sizes below.
#pragma once

#include <linux/kvm.h>

#include <cstddef>
#include <cstdint>

namespace colod::kvm::abi {

inline constexpr size_t k_msrs_header = 8;      // struct kvm_msrs { __u32 nmsrs; __u32 pad; }
inline constexpr size_t k_msr_list_header = 4;  // struct kvm_msr_list { __u32 nmsrs; }
inline constexpr size_t k_cpuid2_header = 8;    // struct kvm_cpuid2 { __u32 nent; __u32 padding; }

// SAFETY: the callers pass buffers laid out as the kernel defines them (header, then array).
inline kvm_msr_entry* msr_entries(void* msrs) {
    return reinterpret_cast<kvm_msr_entry*>(static_cast<uint8_t*>(msrs) + k_msrs_header);
}
inline uint32_t* msr_list_indices(void* list) {
    return reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(list) + k_msr_list_header);
}
inline kvm_cpuid_entry2* cpuid_entries(void* cpuid) {
    return reinterpret_cast<kvm_cpuid_entry2*>(static_cast<uint8_t*>(cpuid) + k_cpuid2_header);
}
inline const kvm_cpuid_entry2* cpuid_entries(const void* cpuid) {
    return reinterpret_cast<const kvm_cpuid_entry2*>(static_cast<const uint8_t*>(cpuid) + k_cpuid2_header);
}

}  // namespace colod::kvm::abi
