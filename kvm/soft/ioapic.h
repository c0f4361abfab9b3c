// SPDX-License-Identifier: GPL-2.0-or-later
// The 24-pin IOAPIC KVM emulates in the kernel, state in kvm_ioapic_state.
//
// Edge-triggered pins latch IRR until delivery; level-triggered pins deliver while the line is
// high and remote IRR is clear, and re-deliver after the EOI if the line is still high
// (KVM's ioapic.c semantics). Not thread-safe: the VM serialises it with its irqchip lock.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <functional>

#include "kvm/soft/lapic.h"
#include "kvm/soft/pic.h"

namespace colod::kvm::soft {

class Ioapic {
public:
    static constexpr uint64_t k_default_base = 0xfec00000;
    static constexpr uint64_t k_mmio_size = 0x100;
    static constexpr int k_pins = KVM_IOAPIC_NUM_PINS;

    // Puts a message on the APIC bus; returns how many LAPICs accepted it.
    std::function<int(const ApicMessage&)> deliver;
    // The guest finished servicing the interrupt of `pin` (EOI of its vector).
    std::function<void(int pin)> on_ack;
    // The guest changed the mask bit of `pin`.
    std::function<void(int pin, bool masked)> on_mask;

    Ioapic();

    // Drives `pin`; result as KVM's: 1 delivered or latched, 0 coalesced, -1 masked.
    int set_irq(int pin, IrqSource source, bool level);
    // An EOI for `vector` reached the IOAPIC (from a LAPIC). `level` = the LAPIC's TMR bit.
    void eoi(int vector, bool level);

    bool covers(uint64_t gpa) const { return gpa - m_state.base_address < k_mmio_size; }
    void mmio_read(uint64_t gpa, void* data, uint32_t len);
    void mmio_write(uint64_t gpa, const void* data, uint32_t len);

    kvm_ioapic_state state() const { return m_state; }
    void set_state(const kvm_ioapic_state& state);

private:
    int service(int pin);
    int raise(int pin, bool line);
    uint32_t read_register() const;
    void write_register(uint32_t value);

    kvm_ioapic_state m_state{};
    uint8_t m_sources[k_pins]{};
};

}  // namespace colod::kvm::soft
