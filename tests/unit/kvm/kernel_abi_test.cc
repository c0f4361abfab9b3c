// SPDX-License-Identifier: GPL-2.0-or-later
// kvm/kernel_abi.h gives C++ the kernel's ioctl numbers: each request built from a struct that
// ends in a flexible array must equal the number a C compiler derives from <linux/kvm.h>.
#include "kvm/kernel_abi.h"

#include <cstddef>
#include <iterator>

#include <catch2/catch.hpp>

extern "C" {
extern const unsigned long colod_c_kvm_numbers[];
extern const unsigned colod_c_kvm_numbers_count;
}

TEST_CASE("every KVM request colod uses has the kernel's number", "[kvm][abi]") {
    const unsigned long cxx[] = {
        KVM_GET_MSR_INDEX_LIST, KVM_GET_MSR_FEATURE_INDEX_LIST, KVM_GET_SUPPORTED_CPUID,
        KVM_GET_EMULATED_CPUID, KVM_SET_GSI_ROUTING,            KVM_GET_MSRS,
        KVM_SET_MSRS,           KVM_SET_CPUID,                  KVM_SET_SIGNAL_MASK,
        KVM_SET_CPUID2,         KVM_GET_CPUID2,                 KVM_GET_XSAVE,
        KVM_SET_XSAVE,          KVM_GET_XSAVE2,                 KVM_SET_PMU_EVENT_FILTER,
        KVM_GET_REGS,           KVM_SET_SREGS,                  KVM_GET_LAPIC,
    };
    REQUIRE(std::size(cxx) == colod_c_kvm_numbers_count);
    for (size_t i = 0; i < std::size(cxx); ++i) {
        INFO("request " << i);
        CHECK(cxx[i] == colod_c_kvm_numbers[i]);
    }
    // Spelled out once, from the kernel's documentation of the x86 numbers.
    CHECK(KVM_GET_SUPPORTED_CPUID == 0xc008ae05UL);
    CHECK(KVM_SET_CPUID2 == 0x4008ae90UL);
    CHECK(KVM_GET_MSRS == 0xc008ae88UL);
    CHECK(KVM_GET_XSAVE == 0x9000aea4UL);
}
