// SPDX-License-Identifier: GPL-2.0-or-later
// The software backend's devices on their own: no interpreter, no vCPU threads.
#include "kvm/kernel_abi.h"

#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "kvm/soft/host_clock.h"
#include "kvm/soft/ioapic.h"
#include "kvm/soft/lapic.h"
#include "kvm/soft/memory_slots.h"
#include "kvm/soft/pic.h"
#include "kvm/soft/pit.h"

using namespace colod::kvm::soft;

TEST_CASE("PIT channel 2 counts down at 1.193182 MHz and latches", "[soft_devices]") {
    Pit pit(KVM_PIT_SPEAKER_DUMMY);
    int64_t t0 = 1'000'000'000;
    pit.write_port(0x43, 0xb4, t0);  // channel 2, lobyte/hibyte, mode 2
    pit.write_port(0x42, 0x00, t0);
    pit.write_port(0x42, 0x10, t0);  // 4096
    pit.write_port(0x61, 0x01, t0);  // gate on
    int64_t later = t0 + 1'000'000;  // 1 ms = 1193 ticks
    pit.write_port(0x43, 0x80, later);  // latch channel 2
    uint32_t count = pit.read_port(0x42, later);
    count |= static_cast<uint32_t>(pit.read_port(0x42, later)) << 8;
    CHECK(count == 4096 - 1193);
    // Read-back of the status: mode 2, access 3.
    pit.write_port(0x43, 0xe8, later);
    CHECK((pit.read_port(0x42, later) & 0x3e) == ((3 << 4) | (2 << 1)));
    auto state = pit.state();
    CHECK(state.channels[2].count == 4096);
    CHECK(state.channels[2].mode == 2);
}

TEST_CASE("PIT channel 0 reinjects one tick at a time", "[soft_devices]") {
    Pit pit(0);
    int64_t t0 = monotonic_ns();
    pit.write_port(0x43, 0x34, t0);
    pit.write_port(0x40, 0x9c, t0);
    pit.write_port(0x40, 0x2e, t0);  // 11932: 10 ms
    CHECK(pit.next_expiry() > t0);
    CHECK_FALSE(pit.service(t0 + 5'000'000));
    CHECK(pit.service(t0 + 35'000'000));  // three expiries, one injection
    CHECK(pit.pending_ticks() == 3);
    CHECK_FALSE(pit.service(t0 + 36'000'000));  // still in flight
    pit.acknowledged();
    CHECK(pit.pending_ticks() == 2);
    CHECK(pit.service(t0 + 37'000'000));  // the backlog goes on
    pit.line_masked(false);  // unmasking forgets the backlog
    CHECK(pit.pending_ticks() == 0);
}

TEST_CASE("PIC initialisation, acknowledge and EOI", "[soft_devices]") {
    Pic pic;
    int acked = -1;
    pic.on_ack = [&](int irq) { acked = irq; };
    // ICW1-4 for the master: base 0x20, 8086 mode.
    pic.write_port(0x20, 0x11);
    pic.write_port(0x21, 0x20);
    pic.write_port(0x21, 0x04);
    pic.write_port(0x21, 0x01);
    pic.write_port(0x21, 0xfe);  // only IRQ 0 unmasked
    CHECK_FALSE(pic.output());
    CHECK(pic.set_irq(0, IrqSource::Pit, true) == 1);
    pic.set_irq(0, IrqSource::Pit, false);
    CHECK(pic.output());
    CHECK(pic.acknowledge() == 0x20);
    CHECK_FALSE(pic.output());
    CHECK(pic.state(0).isr == 1);
    pic.write_port(0x20, 0x20);  // non-specific EOI
    CHECK(pic.state(0).isr == 0);
    CHECK(acked == 0);
    CHECK(pic.set_irq(3, IrqSource::Userspace, true) == -1);  // masked
}

TEST_CASE("IOAPIC level-triggered pins wait for the EOI", "[soft_devices]") {
    Ioapic ioapic;
    std::vector<ApicMessage> sent;
    ioapic.deliver = [&](const ApicMessage& m) {
        sent.push_back(m);
        return 1;
    };
    auto write_reg = [&](uint32_t reg, uint32_t value) {
        ioapic.mmio_write(Ioapic::k_default_base, &reg, 4);
        ioapic.mmio_write(Ioapic::k_default_base + 0x10, &value, 4);
    };
    write_reg(0x10 + 2 * 9, 0x8041);  // level, vector 0x41, unmasked
    write_reg(0x11 + 2 * 9, 0);
    ioapic.set_irq(9, IrqSource::Userspace, true);
    REQUIRE(sent.size() == 1);
    CHECK(sent[0].vector == 0x41);
    CHECK(sent[0].level_trigger);
    ioapic.set_irq(9, IrqSource::Userspace, true);
    CHECK(sent.size() == 1);  // remote IRR holds it
    ioapic.eoi(0x41, true);
    CHECK(sent.size() == 2);  // line still high: delivered again
    ioapic.set_irq(9, IrqSource::Userspace, false);
    ioapic.eoi(0x41, true);
    CHECK(sent.size() == 2);
    CHECK((ioapic.state().redirtbl[9].bits & (1ull << 14)) == 0);
}

TEST_CASE("LAPIC one-shot timer and priorities", "[soft_devices]") {
    Lapic lapic(0, true);
    TscClock clock{1'000'000, 0};
    int64_t now = 1'000'000'000;
    auto write = [&](uint32_t offset, uint32_t value) { return lapic.mmio_write(offset, &value, 4, now); };
    auto read = [&](uint32_t offset) {
        uint32_t value = 0;
        lapic.mmio_read(offset, &value, 4, now, clock);
        return value;
    };
    write(0xf0, 0x1ff);
    write(0x3e0, 0xb);         // divide by 1
    write(0x320, 0x30);        // one-shot, vector 0x30
    write(0x380, 1'000'000);  // 1 ms
    now += 250'000;
    CHECK(read(0x390) == 750'000);
    CHECK(lapic.next_timer(clock) == 1'001'000'000);
    now = 1'001'000'000;
    lapic.service_timer(now, clock);
    CHECK(lapic.pending_vector() == 0x30);
    CHECK(read(0x390) == 0);
    // TPR above the vector's class blocks it.
    write(0x80, 0x40);
    CHECK(lapic.pending_vector() == -1);
    write(0x80, 0);
    lapic.acknowledge(0x30);
    CHECK(lapic.pending_vector() == -1);
    auto effect = write(0xb0, 0);
    CHECK(effect.eoi_vector == 0x30);
    auto state = lapic.state(now);
    uint32_t isr1;
    std::memcpy(&isr1, state.regs + 0x110, 4);
    CHECK(isr1 == 0);
}

TEST_CASE("memory slot dirty bitmaps", "[soft_devices]") {
    std::vector<uint8_t> memory(256 * 4096 + 4096);
    auto base = (reinterpret_cast<uintptr_t>(memory.data()) + 4095) & ~uintptr_t{4095};
    MemorySlots slots;
    kvm_userspace_memory_region region{0, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, 200 * 4096, base};
    REQUIRE(slots.set_region(region, DirtyInit::Clear) == 0);
    CHECK(slots.page(0x100000 + 5 * 4096 + 12, true) == reinterpret_cast<uint8_t*>(base + 5 * 4096));
    CHECK(slots.page(0x100000 + 6 * 4096, false) != nullptr);
    CHECK(slots.page(0x90000, true) == nullptr);
    std::vector<uint64_t> bitmap(4);
    REQUIRE(slots.dirty_log(0, bitmap.data(), HarvestMode::CopyOnly) == 0);
    CHECK(bitmap[0] == (1ull << 5));
    std::vector<uint64_t> ones(4, ~0ull);
    CHECK(slots.clear_dirty_log(0, 128, 72, ones.data()) == 0);  // ends at the slot's end
    CHECK(slots.clear_dirty_log(0, 128, 71, ones.data()) == EINVAL);
    CHECK(slots.clear_dirty_log(0, 0, 64, ones.data()) == 0);
    REQUIRE(slots.dirty_log(0, bitmap.data(), HarvestMode::CopyOnly) == 0);
    CHECK(bitmap[0] == 0);
}
