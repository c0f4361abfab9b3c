// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <cstring>
#include <random>

#include "core/kvm_codec.h"

using namespace colod;
using namespace colod::core;

namespace {

template <typename T>
void randomize(T& value, std::mt19937_64& rng) {
    auto* bytes = reinterpret_cast<unsigned char*>(&value);
    for (size_t i = 0; i < sizeof(T); ++i)
        bytes[i] = static_cast<unsigned char>(rng());
}

kvm::VcpuState random_vcpu(std::mt19937_64& rng) {
    kvm::VcpuState s;
    randomize(s.regs, rng);
    randomize(s.sregs, rng);
    for (auto* seg : {&s.sregs.cs, &s.sregs.ds, &s.sregs.es, &s.sregs.fs, &s.sregs.gs, &s.sregs.ss, &s.sregs.tr,
                      &s.sregs.ldt})
        seg->padding = 0;
    std::memset(s.sregs.gdt.padding, 0, sizeof(s.sregs.gdt.padding));
    std::memset(s.sregs.idt.padding, 0, sizeof(s.sregs.idt.padding));
    s.xsave.resize(1024);
    for (auto& word : s.xsave)
        word = static_cast<uint32_t>(rng());
    s.xcrs.nr_xcrs = 1;
    s.xcrs.xcrs[0].xcr = 0;
    s.xcrs.xcrs[0].value = rng();
    s.debugregs.dr7 = rng();
    s.events.interrupt.shadow = 2;
    s.events.exception_payload = rng();
    s.mp_state.mp_state = 3;
    randomize(s.lapic, rng);
    for (uint32_t i = 0; i < 40; ++i)
        s.msrs.push_back(kvm_msr_entry{static_cast<uint32_t>(rng()), 0, rng()});
    s.tsc_khz = 2'500'000;
    return s;
}

bool same(const kvm::VcpuState& a, const kvm::VcpuState& b) {
    if (a.msrs.size() != b.msrs.size())
        return false;
    for (size_t i = 0; i < a.msrs.size(); ++i)
        if (a.msrs[i].index != b.msrs[i].index || a.msrs[i].data != b.msrs[i].data)
            return false;
    return std::memcmp(&a.regs, &b.regs, sizeof(a.regs)) == 0 && std::memcmp(&a.sregs, &b.sregs, sizeof(a.sregs)) == 0 &&
           a.xsave == b.xsave && a.xcrs.nr_xcrs == b.xcrs.nr_xcrs && a.xcrs.xcrs[0].value == b.xcrs.xcrs[0].value &&
           a.debugregs.dr7 == b.debugregs.dr7 && a.events.interrupt.shadow == b.events.interrupt.shadow &&
           a.events.exception_payload == b.events.exception_payload && a.mp_state.mp_state == b.mp_state.mp_state &&
           std::memcmp(&a.lapic, &b.lapic, sizeof(a.lapic)) == 0 && a.tsc_khz == b.tsc_khz;
}

}  // namespace

TEST_CASE("vCPU state round-trips through its section body") {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 50; ++i) {
        auto state = random_vcpu(rng);
        auto bytes = encode_vcpu_state(state);
        auto decoded = decode_vcpu_state(k_vcpu_state_version, bytes);
        REQUIRE(decoded);
        CHECK(same(state, *decoded));
        CHECK(encode_vcpu_state(*decoded) == bytes);
    }
}

TEST_CASE("VM device state round-trips") {
    std::mt19937_64 rng(9);
    kvm::VmState state;
    randomize(state.pic_master, rng);
    randomize(state.pic_slave, rng);
    state.ioapic.id = 3;
    for (auto& entry : state.ioapic.redirtbl)
        entry.bits = rng();
    state.pit.channels[0].count = 11932;
    state.pit.channels[0].count_load_time = -5;
    state.pit.flags = 1;
    state.clock.clock = rng();
    kvm::VmState decoded;
    REQUIRE(decode_irqchip_state(k_irqchip_state_version, encode_irqchip_state(state), decoded));
    REQUIRE(decode_pit_state(k_pit_state_version, encode_pit_state(state), decoded));
    REQUIRE(decode_clock_state(k_clock_state_version, encode_clock_state(state), decoded));
    CHECK(encode_irqchip_state(decoded) == encode_irqchip_state(state));
    CHECK(encode_pit_state(decoded) == encode_pit_state(state));
    CHECK(decoded.ioapic.redirtbl[23].bits == state.ioapic.redirtbl[23].bits);
    CHECK(decoded.pit.channels[0].count_load_time == -5);
    CHECK(decoded.clock.clock == state.clock.clock);
    // A bad body leaves the target untouched.
    kvm::VmState untouched = decoded;
    auto pit = encode_pit_state(state);
    pit.pop_back();
    CHECK_FALSE(decode_pit_state(k_pit_state_version, pit, untouched));
    CHECK(encode_pit_state(untouched) == encode_pit_state(decoded));
}

TEST_CASE("vCPU state decoder rejects what does not fit") {
    std::mt19937_64 rng(11);
    auto bytes = encode_vcpu_state(random_vcpu(rng));
    CHECK_FALSE(decode_vcpu_state(2, bytes));
    for (size_t cut : {size_t{0}, size_t{1}, bytes.size() / 2, bytes.size() - 1}) {
        auto truncated = std::span(bytes).first(cut);
        auto decoded = decode_vcpu_state(k_vcpu_state_version, truncated);
        REQUIRE_FALSE(decoded);
        CHECK_THAT(decoded.error().message(), Catch::Contains("truncated"));
    }
    auto trailing = bytes;
    trailing.push_back(std::byte{1});
    auto decoded = decode_vcpu_state(k_vcpu_state_version, trailing);
    REQUIRE_FALSE(decoded);
    CHECK_THAT(decoded.error().message(), Catch::Contains("trailing"));
    // Random corruption never crashes the decoder.
    for (int i = 0; i < 300; ++i) {
        auto corrupt = bytes;
        for (int k = 0; k < 4; ++k)
            corrupt[rng() % corrupt.size()] = std::byte{static_cast<unsigned char>(rng())};
        (void)decode_vcpu_state(k_vcpu_state_version, corrupt);
    }
}
