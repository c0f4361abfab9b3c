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
#define KVM_REQUEST(name) name,
#include "kernel_requests.def"
#undef KVM_REQUEST
    };
    const char* const names[] = {
#define KVM_REQUEST(name) #name,
#include "kernel_requests.def"
#undef KVM_REQUEST
    };
    REQUIRE(std::size(cxx) == colod_c_kvm_numbers_count);
    for (size_t i = 0; i < std::size(cxx); ++i) {
        INFO(names[i]);
        CHECK(cxx[i] == colod_c_kvm_numbers[i]);
    }
    // Spelled out once, from the kernel's documentation of the x86 numbers.
    CHECK(KVM_GET_SUPPORTED_CPUID == 0xc008ae05UL);
    CHECK(KVM_SET_CPUID2 == 0x4008ae90UL);
    CHECK(KVM_GET_MSRS == 0xc008ae88UL);
    CHECK(KVM_GET_XSAVE == 0x9000aea4UL);
}
