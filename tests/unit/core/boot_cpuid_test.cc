// SPDX-License-Identifier: GPL-2.0-or-later
// The CPUID table a vCPU gets from the backend's supported table.
#include <vector>

#include <catch2/catch.hpp>

#include "core/boot.h"

using namespace colod;

namespace {

std::vector<kvm_cpuid_entry2> supported() {
    std::vector<kvm_cpuid_entry2> table(3);
    table[0].function = 0;
    table[1].function = 1;
    table[1].ebx = 0x00010800;
    table[2].function = 0xb;
    return table;
}

const kvm_cpuid_entry2& leaf(const std::vector<kvm_cpuid_entry2>& table, uint32_t function) {
    for (auto& entry : table)
        if (entry.function == function)
            return entry;
    FAIL("no leaf " << function);
    return table.front();
}

}  // namespace

TEST_CASE("a vCPU's CPUID carries its APIC ID, the hypervisor bit and TSC-deadline when offered", "[boot]") {
    auto with = core::cpuid_for_vcpu(supported(), 3, core::TscDeadline::Present);
    CHECK(leaf(with, 1).ebx >> 24 == 3);
    CHECK((leaf(with, 1).ebx & 0xffffff) == 0x010800);
    CHECK((leaf(with, 1).ecx & (1u << 31)) != 0);
    CHECK((leaf(with, 1).ecx & (1u << 24)) != 0);
    CHECK(leaf(with, 0xb).edx == 3);

    // KVM leaves the bit out of its supported table; without the capability it stays out.
    auto without = core::cpuid_for_vcpu(supported(), 0, core::TscDeadline::Absent);
    CHECK((leaf(without, 1).ecx & (1u << 24)) == 0);
}
