// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/ioapic.h"

#include <cstring>

namespace colod::kvm::soft {

namespace {

// KVM's IOAPIC: version 0x11 with 24 redirection entries.
constexpr uint32_t k_version = 0x11 | ((Ioapic::k_pins - 1) << 16);

constexpr uint64_t rte_mask = 1ull << 16;
constexpr uint64_t rte_level = 1ull << 15;
constexpr uint64_t rte_remote_irr = 1ull << 14;
constexpr uint64_t rte_delivery_status = 1ull << 12;

}  // namespace

Ioapic::Ioapic() {
    m_state.base_address = k_default_base;
    for (auto& entry : m_state.redirtbl)
        entry.bits = rte_mask;
}

int Ioapic::service(int pin) {
    __u64& entry = m_state.redirtbl[pin].bits;
    if ((entry & rte_mask) || ((entry & rte_level) && (entry & rte_remote_irr)))
        return -1;
    ApicMessage message;
    message.vector = static_cast<uint8_t>(entry & 0xff);
    message.delivery_mode = static_cast<uint8_t>((entry >> 8) & 7);
    message.logical = entry & (1ull << 11);
    message.level_trigger = entry & rte_level;
    message.assert = true;
    message.dest = static_cast<uint32_t>(entry >> 56);
    // An edge request is consumed by its delivery.
    if (!(entry & rte_level))
        m_state.irr &= ~(1u << pin);
    int accepted = deliver ? deliver(message) : 0;
    if (accepted > 0 && (entry & rte_level))
        entry |= rte_remote_irr;
    return accepted;
}

int Ioapic::raise(int pin, bool line) {
    uint32_t bit = 1u << pin;
    bool edge = !(m_state.redirtbl[pin].bits & rte_level);
    if (!line) {
        m_state.irr &= ~bit;
        return 1;
    }
    uint32_t old_irr = m_state.irr;
    m_state.irr |= bit;
    if (edge && old_irr == m_state.irr)
        return 0;  // an earlier edge is still waiting (the pin is masked)
    int result = service(pin);
    return result < 0 && (m_state.redirtbl[pin].bits & rte_mask) ? -1 : (result == 0 ? 0 : 1);
}

int Ioapic::set_irq(int pin, IrqSource source, bool level) {
    uint8_t bit = static_cast<uint8_t>(1u << static_cast<unsigned>(source));
    if (level)
        m_sources[pin] |= bit;
    else
        m_sources[pin] &= static_cast<uint8_t>(~bit);
    return raise(pin, m_sources[pin] != 0);
}

void Ioapic::eoi(int vector, bool level) {
    for (int pin = 0; pin < k_pins; ++pin) {
        __u64& entry = m_state.redirtbl[pin].bits;
        if ((entry & 0xff) != static_cast<uint64_t>(vector))
            continue;
        if (on_ack)
            on_ack(pin);
        if (!level || !(entry & rte_level))
            continue;
        entry &= ~rte_remote_irr;
        if (!(entry & rte_mask) && (m_state.irr & (1u << pin)))
            service(pin);
    }
}

uint32_t Ioapic::read_register() const {
    uint32_t select = m_state.ioregsel;
    switch (select) {
    case 0x00: return (m_state.id & 0xf) << 24;
    case 0x01: return k_version;
    case 0x02: return (m_state.id & 0xf) << 24;  // arbitration ID
    default: break;
    }
    if (select >= 0x10 && select < 0x10 + 2 * k_pins) {
        uint64_t entry = m_state.redirtbl[(select - 0x10) / 2].bits;
        return (select & 1) ? static_cast<uint32_t>(entry >> 32) : static_cast<uint32_t>(entry);
    }
    return 0;
}

void Ioapic::write_register(uint32_t value) {
    uint32_t select = m_state.ioregsel;
    if (select == 0x00) {
        m_state.id = (value >> 24) & 0xf;
        return;
    }
    if (select < 0x10 || select >= 0x10 + 2 * k_pins)
        return;  // version and arbitration registers are read-only
    int pin = static_cast<int>((select - 0x10) / 2);
    __u64& entry = m_state.redirtbl[pin].bits;
    bool was_masked = entry & rte_mask;
    // Remote IRR and delivery status are read-only.
    uint64_t keep = entry & (rte_remote_irr | rte_delivery_status);
    if (select & 1)
        entry = (entry & 0xffffffffull) | (static_cast<uint64_t>(value) << 32);
    else
        entry = (entry & ~0xffffffffull) | value;
    entry = (entry & ~(rte_remote_irr | rte_delivery_status)) | keep;
    // Linux and Xen clear a stuck remote IRR by switching the pin to edge (KVM honours it).
    if (!(entry & rte_level))
        entry &= ~rte_remote_irr;
    bool masked = entry & rte_mask;
    if (was_masked != masked && on_mask)
        on_mask(pin, masked);
    // A request that waited behind the mask (or behind remote IRR) goes out now.
    if (!masked && (m_state.irr & (1u << pin)) && !((entry & rte_level) && (entry & rte_remote_irr)))
        service(pin);
}

void Ioapic::mmio_read(uint64_t gpa, void* data, uint32_t len) {
    uint64_t offset = gpa - m_state.base_address;
    uint32_t value = 0;
    switch (offset & ~3ull) {
    case 0x00: value = m_state.ioregsel; break;
    case 0x10: value = read_register(); break;
    default: break;
    }
    uint64_t wide = value;
    std::memset(data, 0, len);
    std::memcpy(data, &wide, len > 8 ? 8 : len);
}

void Ioapic::mmio_write(uint64_t gpa, const void* data, uint32_t len) {
    uint64_t offset = gpa - m_state.base_address;
    uint32_t value = 0;
    std::memcpy(&value, data, len >= 4 ? 4 : len);
    switch (offset & ~3ull) {
    case 0x00: m_state.ioregsel = value & 0xff; break;
    case 0x10: write_register(value); break;
    case 0x40: eoi(static_cast<int>(value & 0xff), true); break;  // EOI register (version 0x20 style)
    default: break;
    }
}

void Ioapic::set_state(const kvm_ioapic_state& state) {
    // KVM's kvm_set_ioapic(): copy, then re-raise every request the saved IRR held.
    uint32_t irr = state.irr;
    m_state = state;
    m_state.irr = 0;
    for (int pin = 0; pin < k_pins; ++pin)
        if (irr & (1u << pin))
            raise(pin, true);
}

}  // namespace colod::kvm::soft
