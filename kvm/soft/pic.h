// SPDX-License-Identifier: GPL-2.0-or-later
// The pair of 8259A interrupt controllers KVM emulates in the kernel (KVM_CREATE_IRQCHIP),
// state in KVM's kvm_pic_state layout so KVM_GET_IRQCHIP / KVM_SET_IRQCHIP are copies.
//
// Like KVM's, the PIC starts all zeros after KVM_CREATE_IRQCHIP: unmasked, vector base 0,
// until the guest initialises it. Not thread-safe: the VM serialises it with its irqchip lock.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <functional>

namespace colod::kvm::soft {

// Who drives an interrupt line. KVM ORs the levels of all sources of a line
// (KVM_USERSPACE_IRQ_SOURCE_ID, the PIT's own source ...).
enum class IrqSource : uint8_t { Userspace = 0, Pit = 1 };

class Pic {
public:
    // Called when the guest ends the service of `irq` (0-15): EOI, or INTA in auto-EOI mode.
    std::function<void(int irq)> on_ack;
    // Called when the guest changes the mask bit of `irq` (0-15).
    std::function<void(int irq, bool masked)> on_mask;

    Pic();

    // Drives line `irq` (0-15). Returns as KVM's kvm_pic_set_irq: 1 when the request was
    // latched, 0 when it coalesced with one already pending, -1 when the line is masked.
    int set_irq(int irq, IrqSource source, bool level);

    // True while the master's INTR output is asserted (an unmasked request above the ones in
    // service).
    bool output() const { return m_output; }
    // The vector the next INTA would return, without acknowledging (for priority decisions).
    int peek_vector() const;
    // The INTA cycle: acknowledges the highest request and returns its vector (spurious IRQ 7
    // of the master when there is none).
    int acknowledge();

    // Port I/O: 0x20/0x21 (master), 0xa0/0xa1 (slave), 0x4d0/0x4d1 (ELCR). Byte accesses.
    static bool handles_port(uint16_t port);
    uint8_t read_port(uint16_t port);
    void write_port(uint16_t port, uint8_t value);

    // chip 0 = master, 1 = slave.
    kvm_pic_state state(int chip) const { return m_chips[chip]; }
    void set_state(int chip, const kvm_pic_state& state);

private:
    int irq_of(int chip) const;
    void raise_edge(int chip, int irq, bool level);
    void intack(int chip, int irq);
    void clear_isr(int chip, int irq);
    void update();
    void reset_chip(int chip, uint8_t icw1);
    void write_command(int chip, uint8_t value);
    void write_data(int chip, uint8_t value);
    uint8_t poll(int chip);

    kvm_pic_state m_chips[2]{};
    uint8_t m_sources[16]{};  // bit per IrqSource: who holds each line high
    bool m_output = false;
};

}  // namespace colod::kvm::soft
