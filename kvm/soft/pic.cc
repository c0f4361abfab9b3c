// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/pic.h"

namespace colod::kvm::soft {

namespace {

// Priority position (0 = highest) of the first set bit of `mask`, rotated by priority_add; 8
// when none.
int priority_of(const kvm_pic_state& s, uint8_t mask) {
    if (mask == 0)
        return 8;
    int priority = 0;
    while (!(mask & (1u << ((priority + s.priority_add) & 7))))
        ++priority;
    return priority;
}

}  // namespace

Pic::Pic() {
    // Edge/level control registers of the PIIX: IRQ 0, 1, 2 (master) and 8, 13 (slave) are
    // always edge-triggered.
    m_chips[0].elcr_mask = 0xf8;
    m_chips[1].elcr_mask = 0xde;
}

int Pic::irq_of(int chip) const {
    const kvm_pic_state& s = m_chips[chip];
    int priority = priority_of(s, static_cast<uint8_t>(s.irr & ~s.imr));
    if (priority == 8)
        return -1;
    // In special mask mode, masked in-service interrupts do not block lower priorities; in
    // special fully nested mode the master lets the slave interrupt a slave interrupt.
    uint8_t in_service = s.isr;
    if (s.special_mask)
        in_service &= static_cast<uint8_t>(~s.imr);
    if (chip == 0 && s.special_fully_nested_mode)
        in_service &= static_cast<uint8_t>(~(1u << 2));
    int current = priority_of(s, in_service);
    if (priority < current)
        return (priority + s.priority_add) & 7;
    return -1;
}

void Pic::raise_edge(int chip, int irq, bool level) {
    kvm_pic_state& s = m_chips[chip];
    uint8_t mask = static_cast<uint8_t>(1u << irq);
    if (s.elcr & mask) {
        if (level) {
            s.irr |= mask;
            s.last_irr |= mask;
        } else {
            s.irr &= static_cast<uint8_t>(~mask);
            s.last_irr &= static_cast<uint8_t>(~mask);
        }
    } else {
        if (level) {
            if (!(s.last_irr & mask))
                s.irr |= mask;
            s.last_irr |= mask;
        } else {
            s.last_irr &= static_cast<uint8_t>(~mask);
        }
    }
}

void Pic::update() {
    int slave_irq = irq_of(1);
    if (slave_irq >= 0) {
        raise_edge(0, 2, true);
        raise_edge(0, 2, false);
    }
    m_output = irq_of(0) >= 0;
}

int Pic::set_irq(int irq, IrqSource source, bool level) {
    uint8_t bit = static_cast<uint8_t>(1u << static_cast<unsigned>(source));
    if (level)
        m_sources[irq] |= bit;
    else
        m_sources[irq] &= static_cast<uint8_t>(~bit);
    bool line = m_sources[irq] != 0;
    int chip = irq >> 3;
    int pin = irq & 7;
    kvm_pic_state& s = m_chips[chip];
    uint8_t mask = static_cast<uint8_t>(1u << pin);
    bool was_pending = s.irr & mask;
    raise_edge(chip, pin, line);
    int result = line ? (was_pending ? 0 : 1) : 1;
    if (s.imr & mask)
        result = -1;
    update();
    return result;
}

void Pic::clear_isr(int chip, int irq) {
    m_chips[chip].isr &= static_cast<uint8_t>(~(1u << irq));
    int line = chip ? irq + 8 : irq;
    if (line != 2 && on_ack)
        on_ack(line);
}

void Pic::intack(int chip, int irq) {
    kvm_pic_state& s = m_chips[chip];
    s.isr |= static_cast<uint8_t>(1u << irq);
    // A level-triggered request stays in IRR for as long as its line is high.
    if (!(s.elcr & (1u << irq)))
        s.irr &= static_cast<uint8_t>(~(1u << irq));
    if (s.auto_eoi) {
        if (s.rotate_on_auto_eoi)
            s.priority_add = static_cast<uint8_t>((irq + 1) & 7);
        clear_isr(chip, irq);
    }
}

int Pic::peek_vector() const {
    int irq = irq_of(0);
    if (irq < 0)
        return m_chips[0].irq_base + 7;
    if (irq == 2) {
        int slave = irq_of(1);
        return m_chips[1].irq_base + (slave >= 0 ? slave : 7);
    }
    return m_chips[0].irq_base + irq;
}

int Pic::acknowledge() {
    int vector;
    int irq = irq_of(0);
    if (irq >= 0) {
        intack(0, irq);
        if (irq == 2) {
            int slave = irq_of(1);
            if (slave >= 0)
                intack(1, slave);
            else
                slave = 7;  // spurious on the slave
            vector = m_chips[1].irq_base + slave;
        } else {
            vector = m_chips[0].irq_base + irq;
        }
    } else {
        vector = m_chips[0].irq_base + 7;  // spurious on the master
    }
    update();
    return vector;
}

bool Pic::handles_port(uint16_t port) {
    return port == 0x20 || port == 0x21 || port == 0xa0 || port == 0xa1 || port == 0x4d0 || port == 0x4d1;
}

void Pic::reset_chip(int chip, uint8_t icw1) {
    kvm_pic_state& s = m_chips[chip];
    uint8_t in_service = s.isr;
    s.last_irr = 0;
    s.irr &= s.elcr;
    s.imr = 0;
    s.isr = 0;
    s.priority_add = 0;
    s.special_mask = 0;
    s.read_reg_select = 0;
    s.poll = 0;
    s.init4 = icw1 & 1;
    if (!s.init4) {
        s.special_fully_nested_mode = 0;
        s.auto_eoi = 0;
    }
    s.init_state = 1;
    // Interrupts that were in service are over as far as their sources are concerned.
    for (int irq = 0; irq < 8; ++irq) {
        int line = chip ? irq + 8 : irq;
        if ((in_service & (1u << irq)) && line != 2 && on_ack)
            on_ack(line);
    }
}

void Pic::write_command(int chip, uint8_t value) {
    kvm_pic_state& s = m_chips[chip];
    if (value & 0x10) {  // ICW1
        reset_chip(chip, value);
        update();
        return;
    }
    if (value & 0x08) {  // OCW3
        if (value & 0x04)
            s.poll = 1;
        if (value & 0x02)
            s.read_reg_select = value & 1;
        if (value & 0x40)
            s.special_mask = (value >> 5) & 1;
        return;
    }
    // OCW2
    int command = value >> 5;
    switch (command) {
    case 0:
    case 4:
        s.rotate_on_auto_eoi = static_cast<uint8_t>(command >> 2);
        break;
    case 1:    // non-specific EOI
    case 5: {  // rotate on non-specific EOI
        int priority = priority_of(s, s.isr);
        if (priority != 8) {
            int irq = (priority + s.priority_add) & 7;
            if (command == 5)
                s.priority_add = static_cast<uint8_t>((irq + 1) & 7);
            clear_isr(chip, irq);
            update();
        }
        break;
    }
    case 3:  // specific EOI
        clear_isr(chip, value & 7);
        update();
        break;
    case 6:  // set priority
        s.priority_add = static_cast<uint8_t>((value + 1) & 7);
        update();
        break;
    case 7: {  // rotate on specific EOI
        int irq = value & 7;
        s.priority_add = static_cast<uint8_t>((irq + 1) & 7);
        clear_isr(chip, irq);
        update();
        break;
    }
    default:
        break;
    }
}

void Pic::write_data(int chip, uint8_t value) {
    kvm_pic_state& s = m_chips[chip];
    switch (s.init_state) {
    case 0: {  // OCW1: the mask
        uint8_t changed = s.imr ^ value;
        s.imr = value;
        for (int irq = 0; irq < 8; ++irq)
            if ((changed & (1u << irq)) && on_mask)
                on_mask(chip ? irq + 8 : irq, value & (1u << irq));
        update();
        break;
    }
    case 1:  // ICW2: vector base
        s.irq_base = value & 0xf8;
        s.init_state = 2;
        break;
    case 2:  // ICW3: cascade wiring, fixed here
        s.init_state = s.init4 ? 3 : 0;
        break;
    case 3:  // ICW4
        s.special_fully_nested_mode = (value >> 4) & 1;
        s.auto_eoi = (value >> 1) & 1;
        s.init_state = 0;
        break;
    default:
        s.init_state = 0;
        break;
    }
}

uint8_t Pic::poll(int chip) {
    kvm_pic_state& s = m_chips[chip];
    int irq = irq_of(chip);
    if (irq < 0) {
        update();
        return 0x07;
    }
    if (chip == 1) {
        m_chips[0].isr &= static_cast<uint8_t>(~(1u << 2));
        m_chips[0].irr &= static_cast<uint8_t>(~(1u << 2));
    }
    s.irr &= static_cast<uint8_t>(~(1u << irq));
    clear_isr(chip, irq);
    if (chip == 1 || irq != 2)
        update();
    return static_cast<uint8_t>(irq | 0x80);
}

uint8_t Pic::read_port(uint16_t port) {
    if (port == 0x4d0 || port == 0x4d1)
        return m_chips[port & 1].elcr;
    int chip = port >= 0xa0 ? 1 : 0;
    kvm_pic_state& s = m_chips[chip];
    if (s.poll) {
        s.poll = 0;
        return poll(chip);
    }
    if ((port & 1) == 0)
        return s.read_reg_select ? s.isr : s.irr;
    return s.imr;
}

void Pic::write_port(uint16_t port, uint8_t value) {
    if (port == 0x4d0 || port == 0x4d1) {
        kvm_pic_state& s = m_chips[port & 1];
        s.elcr = value & s.elcr_mask;
        return;
    }
    int chip = port >= 0xa0 ? 1 : 0;
    if ((port & 1) == 0)
        write_command(chip, value);
    else
        write_data(chip, value);
}

void Pic::set_state(int chip, const kvm_pic_state& state) {
    m_chips[chip] = state;
    update();
}

}  // namespace colod::kvm::soft
