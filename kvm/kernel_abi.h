// SPDX-License-Identifier: GPL-2.0-or-later
// The kernel's (C) layout of the KVM structs that end in a flexible array.
//
// linux-libc-dev up to at least 6.1 (Debian bookworm) declares these arrays with
// __DECLARE_FLEX_ARRAY, which wraps them in a struct with an empty struct member. An empty
// struct has size 0 in C but 1 in C++, so in C++ `kvm_msrs::entries` sits at offset 16 instead
// of 8, `kvm_cpuid2::entries` at 12 instead of 8 and `kvm_msr_list::indices` at 8 instead of 4.
// The kernel reads the C layout. C++ code must therefore address the arrays through these
// helpers, never through the members, and size buffers with the kernel header sizes below.
//
// The same extra byte also changes the ioctl request numbers: _IOR/_IOW/_IOWR encode
// sizeof(struct) in the number, so in C++ KVM_GET_SUPPORTED_CPUID is 0xc00cae05 where the
// kernel expects 0xc008ae05, and the kernel answers EINVAL (or ENOTTY). This header redefines
// every such request with the C size. Every file of colod includes this header instead of
// <linux/kvm.h>; tests/unit/kvm/kernel_abi_test.cc pins the numbers to the kernel's.
#pragma once

#include <linux/kvm.h>

// The C sizes of the structs whose C++ size differs (flexible array inside an empty struct).
#define COLOD_KVM_C_SIZE_kvm_msrs 8
#define COLOD_KVM_C_SIZE_kvm_msr_list 4
#define COLOD_KVM_C_SIZE_kvm_cpuid 8
#define COLOD_KVM_C_SIZE_kvm_cpuid2 8
#define COLOD_KVM_C_SIZE_kvm_xsave 4096
#define COLOD_KVM_C_SIZE_kvm_irq_routing 8
#define COLOD_KVM_C_SIZE_kvm_signal_mask 4
#define COLOD_KVM_C_SIZE_kvm_pmu_event_filter 32

// SAFETY: the numbers below are the ones the kernel's C headers produce; the test named above
// compares them with constants taken from a C compilation of <linux/kvm.h>.
#define COLOD_KVM_IOC(dir, nr, type) _IOC(dir, KVMIO, nr, COLOD_KVM_C_SIZE_##type)
#undef KVM_GET_MSR_INDEX_LIST
#define KVM_GET_MSR_INDEX_LIST COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x02, kvm_msr_list)
#undef KVM_GET_MSR_FEATURE_INDEX_LIST
#define KVM_GET_MSR_FEATURE_INDEX_LIST COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x0a, kvm_msr_list)
#undef KVM_GET_SUPPORTED_CPUID
#define KVM_GET_SUPPORTED_CPUID COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x05, kvm_cpuid2)
#undef KVM_GET_EMULATED_CPUID
#define KVM_GET_EMULATED_CPUID COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x09, kvm_cpuid2)
#undef KVM_SET_GSI_ROUTING
#define KVM_SET_GSI_ROUTING COLOD_KVM_IOC(_IOC_WRITE, 0x6a, kvm_irq_routing)
#undef KVM_GET_MSRS
#define KVM_GET_MSRS COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x88, kvm_msrs)
#undef KVM_SET_MSRS
#define KVM_SET_MSRS COLOD_KVM_IOC(_IOC_WRITE, 0x89, kvm_msrs)
#undef KVM_SET_CPUID
#define KVM_SET_CPUID COLOD_KVM_IOC(_IOC_WRITE, 0x8a, kvm_cpuid)
#undef KVM_SET_SIGNAL_MASK
#define KVM_SET_SIGNAL_MASK COLOD_KVM_IOC(_IOC_WRITE, 0x8b, kvm_signal_mask)
#undef KVM_SET_CPUID2
#define KVM_SET_CPUID2 COLOD_KVM_IOC(_IOC_WRITE, 0x90, kvm_cpuid2)
#undef KVM_GET_CPUID2
#define KVM_GET_CPUID2 COLOD_KVM_IOC(_IOC_READ | _IOC_WRITE, 0x91, kvm_cpuid2)
#undef KVM_GET_XSAVE
#define KVM_GET_XSAVE COLOD_KVM_IOC(_IOC_READ, 0xa4, kvm_xsave)
#undef KVM_SET_XSAVE
#define KVM_SET_XSAVE COLOD_KVM_IOC(_IOC_WRITE, 0xa5, kvm_xsave)
#undef KVM_GET_XSAVE2
#define KVM_GET_XSAVE2 COLOD_KVM_IOC(_IOC_READ, 0xcf, kvm_xsave)
#undef KVM_SET_PMU_EVENT_FILTER
#define KVM_SET_PMU_EVENT_FILTER COLOD_KVM_IOC(_IOC_WRITE, 0xb2, kvm_pmu_event_filter)

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
