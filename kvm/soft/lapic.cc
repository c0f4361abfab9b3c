// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/lapic.h"

#include <algorithm>
#include <cstring>

#include "kvm/soft/host_clock.h"

namespace colod::kvm::soft {

namespace {

// Register offsets (Intel SDM vol. 3, table 11-1).
constexpr uint32_t r_id = 0x20, r_lvr = 0x30, r_tpr = 0x80, r_apr = 0x90, r_ppr = 0xa0, r_eoi = 0xb0,
                   r_ldr = 0xd0, r_dfr = 0xe0, r_svr = 0xf0, r_isr = 0x100, r_tmr = 0x180, r_irr = 0x200,
                   r_esr = 0x280, r_icr = 0x300, r_icr2 = 0x310, r_lvtt = 0x320, r_lvtthmr = 0x330,
                   r_lvtpc = 0x340, r_lvt0 = 0x350, r_lvt1 = 0x360, r_lvterr = 0x370, r_tmict = 0x380,
                   r_tmcct = 0x390, r_tdcr = 0x3e0;

constexpr uint32_t lvt_masked = 1u << 16;
constexpr uint32_t lvt_mask_common = lvt_masked | (1u << 12) | 0xff;  // mask, delivery status, vector
constexpr uint32_t lvt_mode_mask = 0x700;
constexpr uint32_t lint_mask = lvt_mask_common | lvt_mode_mask | (1u << 13) | (1u << 14) | (1u << 15);
constexpr uint32_t timer_periodic = 1u << 17;
constexpr uint32_t timer_tsc_deadline = 2u << 17;

// KVM's version register: version 0x14 and six LVT entries (no CMCI).
constexpr uint32_t k_version = 0x14 | (5u << 16);
// KVM's min_timer_period_us for periodic timers.
constexpr int64_t k_min_period_ns = 200'000;

constexpr uint64_t base_enable = 1u << 11;
constexpr uint64_t base_bsp = 1u << 8;
constexpr uint64_t base_x2apic = 1u << 10;

bool is_lvt(uint32_t offset) { return offset >= r_lvtt && offset <= r_lvterr; }

uint32_t lvt_write_mask(uint32_t offset) {
    switch (offset) {
    case r_lvtt: return lvt_mask_common;
    case r_lvtthmr:
    case r_lvtpc: return lvt_mask_common | lvt_mode_mask;
    case r_lvt0:
    case r_lvt1: return lint_mask;
    default: return lvt_mask_common;
    }
}

}  // namespace

uint64_t TscClock::at(int64_t ns) const {
    return mul_div(static_cast<uint64_t>(ns), khz, 1'000'000) + static_cast<uint64_t>(offset);
}

int64_t TscClock::ns_at(uint64_t tsc) const {
    uint64_t host_ticks = tsc - static_cast<uint64_t>(offset);
    if (static_cast<int64_t>(host_ticks) < 0)
        return 0;
    uint64_t ns = mul_div(host_ticks, 1'000'000, khz ? khz : 1);
    return ns > static_cast<uint64_t>(k_never) ? k_never : static_cast<int64_t>(ns);
}

Lapic::Lapic(uint32_t vcpu_id, bool bsp) : m_vcpu_id(vcpu_id), m_base(k_default_base | base_enable | (bsp ? base_bsp : 0)) {
    reset(bsp, false);
}

uint32_t Lapic::reg(uint32_t offset) const {
    uint32_t value;
    std::memcpy(&value, m_regs + offset, 4);
    return value;
}

void Lapic::set_reg(uint32_t offset, uint32_t value) { std::memcpy(m_regs + offset, &value, 4); }

bool Lapic::vector_bit(uint32_t base, int vector) const {
    return reg(base + static_cast<uint32_t>(vector / 32) * 0x10) & (1u << (vector % 32));
}

void Lapic::set_vector_bit(uint32_t base, int vector, bool on) {
    uint32_t offset = base + static_cast<uint32_t>(vector / 32) * 0x10;
    uint32_t value = reg(offset);
    value = on ? value | (1u << (vector % 32)) : value & ~(1u << (vector % 32));
    set_reg(offset, value);
}

int Lapic::highest(uint32_t base) const {
    for (int word = 7; word >= 0; --word) {
        uint32_t value = reg(base + static_cast<uint32_t>(word) * 0x10);
        if (value)
            return word * 32 + 31 - __builtin_clz(value);
    }
    return -1;
}

uint32_t Lapic::ppr() const {
    uint32_t tpr = reg(r_tpr);
    int isrv = highest(r_isr);
    uint32_t isr_class = isrv < 0 ? 0 : static_cast<uint32_t>(isrv) & 0xf0;
    return (tpr & 0xf0) >= isr_class ? tpr & 0xff : isr_class;
}

void Lapic::update_ppr() {
    set_reg(r_ppr, ppr());
    m_maybe_pending.store(true, std::memory_order_release);
}

void Lapic::reset(bool bsp, bool init_event) {
    std::lock_guard lock(m_lock);
    std::memset(m_regs, 0, sizeof(m_regs));
    set_reg(r_id, m_vcpu_id << 24);
    set_reg(r_lvr, k_version);
    for (uint32_t offset = r_lvtt; offset <= r_lvterr; offset += 0x10)
        set_reg(offset, lvt_masked);
    // KVM's LINT0_REENABLED quirk: the BSP's LINT0 comes out of reset in ExtINT mode, so the
    // PIC reaches it without any guest set-up.
    if (bsp)
        set_reg(r_lvt0, 0x700);
    set_reg(r_dfr, 0xffffffff);
    set_reg(r_svr, 0xff);
    m_current_mode = 0;
    m_target = k_never;
    m_period = 0;
    m_tsc_deadline = 0;
    if (!init_event)
        m_base.store(k_default_base | base_enable | (bsp ? base_bsp : 0), std::memory_order_relaxed);
    update_ppr();
}

bool Lapic::set_apic_base(uint64_t value) {
    // Bits 0-7 and 9 are reserved, as is everything at or above MAXPHYADDR (40 bits), and x2APIC
    // mode (bit 10) is not offered.
    uint64_t reserved = 0x2ffull | base_x2apic | ~((1ull << 40) - 1);
    if (value & reserved)
        return false;
    std::lock_guard lock(m_lock);
    uint64_t old = m_base.load(std::memory_order_relaxed);
    m_base.store(value, std::memory_order_relaxed);
    if ((old ^ value) & base_enable && (value & base_enable))
        set_reg(r_id, m_vcpu_id << 24);  // KVM restores the ID when the APIC comes back
    m_maybe_pending.store(true, std::memory_order_release);
    return true;
}

bool Lapic::matches_locked(const ApicMessage& message, const Lapic* sender) const {
    switch (message.shorthand) {
    case 1: return sender == this;
    case 2: return true;
    case 3: return sender != this;
    default: break;
    }
    uint32_t dest = message.dest & 0xff;
    if (!message.logical)
        return dest == 0xff || dest == (reg(r_id) >> 24);
    if (dest == 0xff)
        return true;
    uint32_t logical_id = reg(r_ldr) >> 24;
    uint32_t model = reg(r_dfr) >> 28;
    if (model == 0xf)  // flat
        return (logical_id & dest) != 0;
    if (model == 0x0)  // cluster
        return (logical_id >> 4) == (dest >> 4) && (logical_id & dest & 0xf) != 0;
    return false;
}

bool Lapic::matches(const ApicMessage& message, const Lapic* sender) {
    std::lock_guard lock(m_lock);
    return matches_locked(message, sender);
}

void Lapic::accept_fixed(uint8_t vector, bool level) {
    set_vector_bit(r_tmr, vector, level);
    set_vector_bit(r_irr, vector, true);
    m_maybe_pending.store(true, std::memory_order_release);
}

bool Lapic::accept_locked(const ApicMessage& message) {
    switch (message.delivery_mode) {
    case apic_mode::fixed:
    case apic_mode::lowest:
        if (!hw_enabled() || !sw_enabled())
            return false;
        if (message.vector < 16) {
            set_reg(r_esr, reg(r_esr) | (1u << 6));  // received illegal vector
            return false;
        }
        accept_fixed(message.vector, message.level_trigger);
        return true;
    case apic_mode::nmi:
        m_nmis.fetch_add(1);
        m_maybe_pending.store(true, std::memory_order_release);
        return true;
    case apic_mode::init:
        if (message.level_trigger && !message.assert)
            return false;  // INIT level de-assert: ignored, as by KVM
        m_init.store(true);
        m_maybe_pending.store(true, std::memory_order_release);
        return true;
    case apic_mode::sipi:
        m_sipi_vector.store(message.vector);
        m_sipi.store(true);
        m_maybe_pending.store(true, std::memory_order_release);
        return true;
    default:
        return false;  // SMI (no SMM) and ExtINT through the APIC bus are not modelled
    }
}

int Lapic::deliver(const ApicMessage& message, const Lapic* sender) {
    std::lock_guard lock(m_lock);
    if (!matches_locked(message, sender))
        return -1;
    return accept_locked(message) ? 1 : 0;
}

std::optional<uint8_t> Lapic::take_sipi() {
    if (!m_sipi.exchange(false))
        return std::nullopt;
    return m_sipi_vector.load();
}

int Lapic::pending_vector() {
    if (!m_maybe_pending.load(std::memory_order_acquire))
        return -1;
    std::lock_guard lock(m_lock);
    int vector = -1;
    if (hw_enabled() && sw_enabled()) {
        int irrv = highest(r_irr);
        if (irrv >= 0 && (static_cast<uint32_t>(irrv) & 0xf0) > (ppr() & 0xf0))
            vector = irrv;
    }
    // Cleared under the lock, so a concurrent deliver() (which sets it under the lock too) is
    // never lost. INIT/SIPI/NMI keep the hint up until the vCPU takes them.
    if (vector < 0 && !m_init.load() && !m_sipi.load() && m_nmis.load() == 0)
        m_maybe_pending.store(false, std::memory_order_release);
    return vector;
}

void Lapic::acknowledge(int vector) {
    std::lock_guard lock(m_lock);
    set_vector_bit(r_irr, vector, false);
    set_vector_bit(r_isr, vector, true);
    set_reg(r_ppr, ppr());
    m_maybe_pending.store(true, std::memory_order_release);
}

void Lapic::requeue(int vector) {
    if (vector < 16 || vector > 255)
        return;
    std::lock_guard lock(m_lock);
    set_vector_bit(r_isr, vector, false);
    set_vector_bit(r_irr, vector, true);
    update_ppr();
}

bool Lapic::accepts_pic_interrupts() {
    std::lock_guard lock(m_lock);
    if (!hw_enabled())
        return true;
    uint32_t lvt0 = reg(r_lvt0);
    return !(lvt0 & lvt_masked) && (lvt0 & lvt_mode_mask) == 0x700;
}

uint64_t Lapic::read_cr8() {
    std::lock_guard lock(m_lock);
    return (reg(r_tpr) >> 4) & 0xf;
}

void Lapic::write_cr8(uint64_t value) {
    std::lock_guard lock(m_lock);
    set_reg(r_tpr, static_cast<uint32_t>((value & 0xf) << 4));
    update_ppr();
}

uint32_t Lapic::timer_mode() const { return reg(r_lvtt) & m_timer_mode_mask; }

uint64_t Lapic::divide() const {
    uint32_t tdcr = reg(r_tdcr);
    uint32_t code = (tdcr & 3) | ((tdcr & 8) >> 1);
    return 1ull << ((code + 1) & 7);
}

void Lapic::start_timer(int64_t now) {
    m_target = k_never;
    m_period = 0;
    if (timer_mode() == timer_tsc_deadline)
        return;
    uint32_t initial = reg(r_tmict);
    if (initial == 0)
        return;
    m_period = static_cast<int64_t>(initial * divide());
    if (timer_mode() == timer_periodic && m_period < k_min_period_ns)
        m_period = k_min_period_ns;
    m_target = now + m_period;
}

void Lapic::update_timer_mode() {
    uint32_t mode = timer_mode();
    if (mode == m_current_mode)
        return;
    // Entering or leaving TSC-deadline mode stops the timer and forgets both the initial count
    // and the deadline (KVM's apic_update_lvtt).
    if ((m_current_mode == timer_tsc_deadline) != (mode == timer_tsc_deadline)) {
        m_target = k_never;
        m_period = 0;
        set_reg(r_tmict, 0);
        m_tsc_deadline = 0;
    }
    m_current_mode = mode;
}

void Lapic::set_tsc_deadline_supported(bool supported) {
    std::lock_guard lock(m_lock);
    m_timer_mode_mask = supported ? (3u << 17) : (1u << 17);
    update_timer_mode();
}

uint64_t Lapic::tsc_deadline() {
    std::lock_guard lock(m_lock);
    return timer_mode() == timer_tsc_deadline ? m_tsc_deadline : 0;
}

void Lapic::set_tsc_deadline(uint64_t value, int64_t) {
    std::lock_guard lock(m_lock);
    // Outside TSC-deadline mode the MSR write is dropped, as the SDM says and KVM does.
    if (timer_mode() != timer_tsc_deadline)
        return;
    m_tsc_deadline = value;
}

int64_t Lapic::next_timer(const TscClock& clock) {
    std::lock_guard lock(m_lock);
    if (timer_mode() == timer_tsc_deadline)
        return m_tsc_deadline ? clock.ns_at(m_tsc_deadline) : k_never;
    return m_target;
}

void Lapic::service_timer(int64_t now, const TscClock& clock) {
    std::lock_guard lock(m_lock);
    bool fire = false;
    if (timer_mode() == timer_tsc_deadline) {
        if (m_tsc_deadline && clock.at(now) >= m_tsc_deadline) {
            m_tsc_deadline = 0;
            fire = true;
        }
    } else if (m_target <= now) {
        fire = true;
        if (timer_mode() == timer_periodic && m_period > 0) {
            // Periods missed while the vCPU was out of KVM_RUN coalesce into this one interrupt,
            // as they do in KVM while the previous timer interrupt is still pending.
            m_target += m_period;
            if (m_target <= now)
                m_target += ((now - m_target) / m_period + 1) * m_period;
        } else {
            m_target = k_never;
        }
    }
    uint32_t lvtt = reg(r_lvtt);
    if (fire && !(lvtt & lvt_masked) && hw_enabled() && sw_enabled() && (lvtt & 0xff) >= 16)
        accept_fixed(static_cast<uint8_t>(lvtt & 0xff), false);
}

void Lapic::mmio_read(uint32_t offset, void* data, uint32_t len, int64_t now, const TscClock&) {
    std::memset(data, 0, len);
    std::lock_guard lock(m_lock);
    if (!hw_enabled()) {
        // KVM_X86_QUIRK_LAPIC_MMIO_HOLE: a disabled APIC's page reads as all ones.
        std::memset(data, 0xff, len);
        return;
    }
    uint32_t within = offset & 0xf;
    if (within + len > 4 || offset > 0x3f0)
        return;
    uint32_t aligned = offset & ~0xfu;
    uint32_t value = 0;
    switch (aligned) {
    case r_apr:
    case r_eoi:
        value = 0;
        break;
    case r_ppr:
        value = ppr();
        break;
    case r_tmcct: {
        if (timer_mode() == timer_tsc_deadline || reg(r_tmict) == 0 || m_target == k_never || m_period == 0)
            break;
        int64_t remaining = std::max<int64_t>(m_target - now, 0);
        remaining %= m_period;
        value = static_cast<uint32_t>(static_cast<uint64_t>(remaining) / divide());
        break;
    }
    case r_icr:
        value = reg(r_icr) & ~(1u << 12);
        break;
    default:
        value = reg(aligned);
        break;
    }
    std::memcpy(data, reinterpret_cast<const uint8_t*>(&value) + within, len);
}

LapicWriteEffect Lapic::mmio_write(uint32_t offset, const void* data, uint32_t len, int64_t now) {
    LapicWriteEffect effect;
    // Only aligned 32-bit writes reach xAPIC registers; KVM drops the rest silently.
    if (len != 4 || (offset & 0xf))
        return effect;
    uint32_t value;
    std::memcpy(&value, data, 4);
    std::lock_guard lock(m_lock);
    if (!hw_enabled())
        return effect;
    write_locked(offset, value, now, effect);
    return effect;
}

void Lapic::write_locked(uint32_t offset, uint32_t value, int64_t now, LapicWriteEffect& effect) {
    switch (offset) {
    case r_id:
        set_reg(r_id, value & 0xff000000);
        break;
    case r_tpr:
        set_reg(r_tpr, value & 0xff);
        update_ppr();
        break;
    case r_eoi: {
        int vector = highest(r_isr);
        if (vector >= 0) {
            set_vector_bit(r_isr, vector, false);
            effect.eoi_vector = vector;
            effect.eoi_level = vector_bit(r_tmr, vector);
            update_ppr();
        }
        break;
    }
    case r_ldr:
        set_reg(r_ldr, value & 0xff000000);
        break;
    case r_dfr:
        set_reg(r_dfr, value | 0x0fffffff);
        break;
    case r_svr:
        set_reg(r_svr, value & 0x3ff);
        if (!(value & 0x100)) {
            for (uint32_t lvt = r_lvtt; lvt <= r_lvterr; lvt += 0x10)
                set_reg(lvt, reg(lvt) | lvt_masked);
            update_timer_mode();
        }
        m_maybe_pending.store(true, std::memory_order_release);
        break;
    case r_esr:
        set_reg(r_esr, 0);
        break;
    case r_icr: {
        set_reg(r_icr, value & ~(1u << 12));
        ApicMessage message;
        message.vector = static_cast<uint8_t>(value & 0xff);
        message.delivery_mode = static_cast<uint8_t>((value >> 8) & 7);
        message.logical = value & (1u << 11);
        message.assert = value & (1u << 14);
        message.level_trigger = value & (1u << 15);
        message.shorthand = static_cast<uint8_t>((value >> 18) & 3);
        message.dest = reg(r_icr2) >> 24;
        effect.ipi = message;
        break;
    }
    case r_icr2:
        set_reg(r_icr2, value & 0xff000000);
        break;
    case r_tmict:
        if (timer_mode() == timer_tsc_deadline)
            break;
        set_reg(r_tmict, value);
        start_timer(now);
        break;
    case r_tdcr: {
        uint64_t old_divide = divide();
        set_reg(r_tdcr, value & 0xb);
        uint64_t new_divide = divide();
        // A running count keeps its remaining ticks at the new rate.
        if (m_target != k_never && old_divide != new_divide && m_period > 0) {
            int64_t remaining = std::max<int64_t>(m_target - now, 0);
            m_target = now + static_cast<int64_t>(mul_div(static_cast<uint64_t>(remaining), new_divide, old_divide));
            m_period = static_cast<int64_t>(mul_div(static_cast<uint64_t>(m_period), new_divide, old_divide));
            if (timer_mode() == timer_periodic && m_period < k_min_period_ns)
                m_period = k_min_period_ns;
        }
        break;
    }
    default:
        if (is_lvt(offset)) {
            uint32_t mask = lvt_write_mask(offset);
            if (offset == r_lvtt)
                mask |= m_timer_mode_mask;
            if (!sw_enabled())
                value |= lvt_masked;
            set_reg(offset, value & mask);
            if (offset == r_lvtt)
                update_timer_mode();
        }
        // Read-only and reserved registers ignore writes.
        break;
    }
}

kvm_lapic_state Lapic::state(int64_t now) {
    kvm_lapic_state out{};
    TscClock unused;
    uint32_t current = 0;
    mmio_read(r_tmcct, &current, 4, now, unused);
    std::lock_guard lock(m_lock);
    std::memcpy(out.regs, m_regs, sizeof(out.regs));
    std::memcpy(out.regs + r_tmcct, &current, 4);
    uint32_t ppr_value = ppr();
    std::memcpy(out.regs + r_ppr, &ppr_value, 4);
    return out;
}

void Lapic::set_state(const kvm_lapic_state& state, int64_t now) {
    std::lock_guard lock(m_lock);
    std::memcpy(m_regs, state.regs, sizeof(m_regs));
    // The fix-ups of KVM's kvm_apic_set_state(): the version is ours, the mode is re-derived
    // (a change into or out of TSC-deadline mode drops TMICT and the deadline), and a one-shot
    // or periodic count restarts from TMICT now (the saved current count is not used).
    set_reg(r_lvr, k_version);
    set_reg(r_icr, reg(r_icr) & ~(1u << 12));
    update_timer_mode();
    start_timer(now);
    update_ppr();
}

}  // namespace colod::kvm::soft
