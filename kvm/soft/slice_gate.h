// SPDX-License-Identifier: GPL-2.0-or-later
// The synchronisation between vCPU threads executing guest code and VM-wide changes that must
// not overlap with it.
//
// The interpreter caches, within one run() slice, the host pointers of pages it may write, and
// marks a page dirty only when it first asks for it in that slice. Clearing a dirty bit while a
// slice is in flight could therefore lose writes the slice makes afterwards; changing memory
// slots under a running slice would leave it with stale pointers. Real KVM solves both with
// write protection, TLB flushes and IPIs that wait for vCPUs to leave guest mode. Here the
// same effect comes from this gate: every slice runs inside enter()/leave(), and an Exclusive
// section (dirty-log clearing, slot changes) first closes the gate and waits until no slice is
// in flight. A slice is at most ~20 µs, so an Exclusive section waits at most that long.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace colod::kvm::soft {

class SliceGate {
public:
    // Called by a vCPU thread around one interpreter slice. Blocks while an Exclusive section
    // is open.
    void enter() {
        for (;;) {
            m_active.fetch_add(1, std::memory_order_seq_cst);
            if (m_closed.load(std::memory_order_seq_cst) == 0)
                return;
            leave();
            m_closed.wait(1, std::memory_order_seq_cst);
        }
    }
    void leave() {
        if (m_active.fetch_sub(1, std::memory_order_seq_cst) == 1 && m_closed.load(std::memory_order_seq_cst) != 0)
            m_active.notify_all();
    }

    // While an Exclusive lives, no slice runs. Exclusive sections are serialised among
    // themselves.
    class Exclusive {
    public:
        explicit Exclusive(SliceGate& gate) : m_gate(gate), m_lock(gate.m_exclusive) {
            m_gate.m_closed.store(1, std::memory_order_seq_cst);
            for (uint32_t active = m_gate.m_active.load(std::memory_order_seq_cst); active != 0;
                 active = m_gate.m_active.load(std::memory_order_seq_cst))
                m_gate.m_active.wait(active, std::memory_order_seq_cst);
        }
        ~Exclusive() {
            m_gate.m_closed.store(0, std::memory_order_seq_cst);
            m_gate.m_closed.notify_all();
        }
        Exclusive(const Exclusive&) = delete;
        Exclusive& operator=(const Exclusive&) = delete;

    private:
        SliceGate& m_gate;
        std::lock_guard<std::mutex> m_lock;
    };

private:
    std::atomic<uint32_t> m_active{0};
    std::atomic<uint32_t> m_closed{0};
    std::mutex m_exclusive;
};

}  // namespace colod::kvm::soft
