// SPDX-License-Identifier: GPL-2.0-or-later
// The 8254 programmable interval timer KVM emulates in the kernel (KVM_CREATE_PIT2), state in
// kvm_pit_state2, with KVM's tick accounting.
//
// Channel 0 drives GSI 0. As in KVM (reinject mode, the default), every expiry is counted and
// one interrupt is in flight at a time: the next is injected only after the guest acknowledged
// the previous one (EOI at the IOAPIC or the PIC), so ticks missed while the vCPUs were out of
// KVM_RUN are delivered later instead of being lost. Unmasking the line forgets the backlog
// (KVM's mask notifier).
//
// The software backend has no kernel timers: expiries are counted lazily by whichever vCPU
// thread calls service() between interpreter slices, and a halted vCPU sleeps at most until
// next_expiry().
#pragma once

#include "kvm/kernel_abi.h"

#include <atomic>
#include <cstdint>
#include <mutex>

namespace colod::kvm::soft {

class Pit {
public:
    static constexpr uint32_t k_frequency_hz = 1193182;

    explicit Pit(uint32_t config_flags);

    // Ports 0x40-0x43, and 0x61 when created with KVM_PIT_SPEAKER_DUMMY.
    bool handles_port(uint16_t port) const;
    uint8_t read_port(uint16_t port, int64_t now);
    void write_port(uint16_t port, uint8_t value, int64_t now);

    kvm_pit_state2 state() const;
    // KVM_SET_PIT2: copies the channels and flags, then reloads every count (now).
    void set_state(const kvm_pit_state2& state, int64_t now);

    // Host ns of the next channel-0 expiry, k_never when none. Lock-free.
    int64_t next_expiry() const { return m_next.load(std::memory_order_acquire); }

    // Counts expiries up to `now` and decides whether to inject a pulse on GSI 0 now.
    bool service(int64_t now);

    // Acknowledgement (EOI of the PIT's interrupt) and mask changes of GSI 0. Lock-free: called
    // from inside the irqchip.
    void acknowledged();
    void line_masked(bool masked);

    uint32_t pending_ticks() const { return static_cast<uint32_t>(m_pending.load()); }

private:
    void load_count(int channel, uint32_t value, int64_t now);
    uint32_t count_at(int channel, int64_t now) const;
    bool output_at(int channel, int64_t now) const;
    void latch_count(int channel, int64_t now);
    void latch_status(int channel, int64_t now);
    void set_gate(int channel, bool gate, int64_t now);

    mutable std::mutex m_lock;
    kvm_pit_state2 m_state{};
    uint32_t m_config_flags;
    bool m_speaker_data = false;
    // Channel 0 timer.
    std::atomic<int64_t> m_next;
    int64_t m_period = 0;  // 0: one-shot
    // Reinjection (KVM's pending / irq_ack).
    std::atomic<int> m_pending{0};
    std::atomic<int> m_irq_ack{1};
    std::atomic<bool> m_retry{false};
};

}  // namespace colod::kvm::soft
