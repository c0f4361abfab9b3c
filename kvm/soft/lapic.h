// SPDX-License-Identifier: GPL-2.0-or-later
// One vCPU's local APIC (xAPIC mode), as KVM emulates it in the kernel.
//
// The registers live in exactly the 1024-byte layout of kvm_lapic_state, so KVM_GET_LAPIC and
// KVM_SET_LAPIC are copies plus the same fix-ups KVM makes (current count, timer restart).
// The timer counts on a 1 GHz APIC bus (KVM's APIC_BUS_CYCLE_NS = 1) divided by TDCR, in
// one-shot, periodic (at least 200 µs, KVM's min_timer_period_us) and TSC-deadline modes.
//
// Threading: the owning vCPU thread does everything; other threads (IOAPIC, MSIs, IPIs from
// other vCPUs) only call deliver(). One mutex guards the registers; pending() has a lock-free
// fast path so that the interpreter may ask often.
#pragma once

#include "kvm/kernel_abi.h"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>

namespace colod::kvm::soft {

// An interrupt message on the APIC bus: an IOAPIC redirection, an MSI or an IPI.
struct ApicMessage {
    uint8_t vector = 0;
    uint8_t delivery_mode = 0;  // 0 fixed, 1 lowest priority, 2 SMI, 4 NMI, 5 INIT, 6 SIPI, 7 ExtINT
    bool logical = false;       // destination mode
    bool level_trigger = false;
    bool assert = true;  // level: assert or de-assert (INIT de-assert is ignored)
    uint8_t shorthand = 0;  // 0 none, 1 self, 2 all including self, 3 all excluding self
    uint32_t dest = 0;      // 8-bit xAPIC destination
};

namespace apic_mode {
inline constexpr uint8_t fixed = 0, lowest = 1, smi = 2, nmi = 4, init = 5, sipi = 6, extint = 7;
}

// The guest TSC of one vCPU: guest_tsc = host_ns · khz / 10⁶ + offset.
struct TscClock {
    uint32_t khz = 0;
    int64_t offset = 0;
    uint64_t at(int64_t ns) const;
    // The host time at which the guest TSC reaches `tsc` (never earlier than 0).
    int64_t ns_at(uint64_t tsc) const;
};

// What a register write asks the vCPU to do once the LAPIC lock is released.
struct LapicWriteEffect {
    int eoi_vector = -1;  // an EOI retired this vector: tell the IOAPIC (and its ack listeners)
    bool eoi_level = false;  // ...with TMR set (level-triggered)
    std::optional<ApicMessage> ipi;  // ICR write: send this
};

class Lapic {
public:
    static constexpr uint64_t k_default_base = 0xfee00000;

    Lapic(uint32_t vcpu_id, bool bsp);

    // --- any thread ---
    // Destination check (with the sender for shorthands) and acceptance, atomically with
    // respect to this APIC's registers. Returns -1 when the message is not for this APIC, 0
    // when it is but was not accepted (APIC disabled, illegal vector), 1 when accepted.
    int deliver(const ApicMessage& message, const Lapic* sender);
    bool matches(const ApicMessage& message, const Lapic* sender);
    // True when the vCPU may have something to do (an IRR bit, INIT, SIPI, NMI); cheap.
    bool maybe_pending() const { return m_maybe_pending.load(std::memory_order_acquire); }

    // --- owning vCPU thread ---
    // The highest-priority deliverable vector (IRR above PPR), or -1.
    int pending_vector();
    void acknowledge(int vector);
    bool accepts_pic_interrupts();

    uint64_t read_cr8();
    void write_cr8(uint64_t value);

    uint64_t apic_base() const { return m_base.load(std::memory_order_relaxed); }
    // Validates like KVM (reserved bits, no x2APIC); false means #GP / refused.
    bool set_apic_base(uint64_t value);
    bool hw_enabled() const { return apic_base() & (1u << 11); }
    bool covers(uint64_t gpa) const { return (gpa & ~0xfffull) == (apic_base() & ~0xfffull); }

    void mmio_read(uint32_t offset, void* data, uint32_t len, int64_t now, const TscClock& clock);
    LapicWriteEffect mmio_write(uint32_t offset, const void* data, uint32_t len, int64_t now);

    // The TSC-deadline mode needs the guest CPUID bit (KVM masks the mode otherwise).
    void set_tsc_deadline_supported(bool supported);
    uint64_t tsc_deadline();
    void set_tsc_deadline(uint64_t value, int64_t now);

    // Timer: when it next needs service (host ns, k_never if idle), and the service itself.
    int64_t next_timer(const TscClock& clock);
    void service_timer(int64_t now, const TscClock& clock);

    // INIT / SIPI / NMI requests taken by deliver(), consumed by the vCPU.
    bool has_requests() const { return m_init.load() || m_sipi.load() || m_nmis.load() != 0; }
    bool take_init() { return m_init.exchange(false); }
    std::optional<uint8_t> take_sipi();
    uint32_t take_nmis() { return m_nmis.exchange(0); }

    // INIT resets the registers but keeps the base MSR (KVM's kvm_lapic_reset(init_event)).
    void reset(bool bsp, bool init_event);

    kvm_lapic_state state(int64_t now);
    void set_state(const kvm_lapic_state& state, int64_t now);

    // Moves a vector from ISR back to IRR: an interrupt a saved state says was being injected
    // is delivered again (KVM_SET_VCPU_EVENTS / SET_SREGS interrupt_bitmap).
    void requeue(int vector);

private:
    uint32_t reg(uint32_t offset) const;
    void set_reg(uint32_t offset, uint32_t value);
    bool vector_bit(uint32_t base, int vector) const;
    void set_vector_bit(uint32_t base, int vector, bool on);
    int highest(uint32_t base) const;
    uint32_t ppr() const;
    void update_ppr();
    bool sw_enabled() const { return reg(0xf0) & 0x100; }
    uint32_t timer_mode() const;
    uint64_t divide() const;
    void start_timer(int64_t now);
    void update_timer_mode();
    void accept_fixed(uint8_t vector, bool level);
    bool matches_locked(const ApicMessage& message, const Lapic* sender) const;
    bool accept_locked(const ApicMessage& message);
    void write_locked(uint32_t offset, uint32_t value, int64_t now, LapicWriteEffect& effect);

    mutable std::mutex m_lock;
    alignas(16) uint8_t m_regs[1024]{};
    uint32_t m_vcpu_id;
    std::atomic<uint64_t> m_base;
    std::atomic<bool> m_maybe_pending{false};
    std::atomic<bool> m_init{false};
    std::atomic<bool> m_sipi{false};
    std::atomic<uint8_t> m_sipi_vector{0};
    std::atomic<uint32_t> m_nmis{0};

    // Timer.
    uint32_t m_timer_mode_mask = 1u << 17;  // periodic only until CPUID offers TSC-deadline
    uint32_t m_current_mode = 0;
    int64_t m_target = INT64_MAX;  // next expiry of one-shot/periodic, host ns
    int64_t m_period = 0;
    uint64_t m_tsc_deadline = 0;
};

}  // namespace colod::kvm::soft
