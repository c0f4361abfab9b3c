// SPDX-License-Identifier: GPL-2.0-or-later
// One software VM: memory slots, the in-kernel-style irqchip (PIC pair + IOAPIC), the PIT, the
// kvmclock, and its vCPUs. Answers the VM ioctls of the KVM API with KVM's semantics.
//
// Lifetime: like a KVM VM, it lives as long as any handle to it (the VM handle or a vCPU
// handle) does; vCPUs are never destroyed before their VM.
//
// Locks, outermost first: m_lock (VM ioctls that change the VM's shape) → m_irqchip_lock (PIC
// and IOAPIC) → each LAPIC's own lock. The PIT has its own lock, never held while calling into
// the irqchip; it is told about acknowledgements through atomics.
#pragma once

#include "kvm/kernel_abi.h"

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "kvm/handle.h"
#include "kvm/soft/ioapic.h"
#include "kvm/soft/lapic.h"
#include "kvm/soft/memory_slots.h"
#include "kvm/soft/pic.h"
#include "kvm/soft/pit.h"
#include "kvm/soft/slice_gate.h"

namespace colod::kvm::soft {

class SoftVcpu;

// KVM_CAP_MAX_VCPUS: xAPIC physical IDs 0-254 (255 is the broadcast ID).
inline constexpr uint32_t k_max_vcpus = 255;

class SoftVm : public std::enable_shared_from_this<SoftVm> {
public:
    static std::shared_ptr<SoftVm> create();
    ~SoftVm();
    SoftVm(const SoftVm&) = delete;
    SoftVm& operator=(const SoftVm&) = delete;

    // A VM ioctl: >= 0, or -1 with errno.
    int ioctl(unsigned long request, unsigned long arg);
    base::Result<std::unique_ptr<Handle>> create_vcpu(unsigned long id);

    // --- for vCPUs ---
    MemorySlots& slots() { return m_slots; }
    SliceGate& gate() { return m_gate; }
    bool has_irqchip() const { return m_has_irqchip.load(std::memory_order_acquire); }
    bool has_pit() const { return m_pit.load(std::memory_order_acquire) != nullptr; }

    // Drives GSI `gsi` through KVM's default routing (IOAPIC pin gsi < 24, PIC pin gsi < 16).
    // Returns KVM's kvm_set_irq() status.
    int set_irq(uint32_t gsi, IrqSource source, bool level);
    // Puts a message on the APIC bus: returns the number of LAPICs that accepted it, or -1
    // when none matched (KVM's kvm_irq_delivery_to_apic()).
    int deliver(const ApicMessage& message, const Lapic* sender);
    // A LAPIC retired `vector` (EOI); `level` when its TMR bit was set.
    void eoi(int vector, bool level);

    // The PIC's INTR output, for vCPUs that accept ExtINT. Lock-free hint.
    bool pic_output() const { return m_pic_output.load(std::memory_order_seq_cst); }
    // Vector of the PIC's pending interrupt (without acknowledging), or -1 when the output is low.
    int pic_pending_vector();
    int pic_acknowledge();

    bool handles_port(uint16_t port) const;
    void port_read(uint16_t port, void* data, uint32_t size, int64_t now);
    void port_write(uint16_t port, const void* data, uint32_t size, int64_t now);
    bool ioapic_covers(uint64_t gpa) const { return has_irqchip() && m_ioapic.covers(gpa); }
    void ioapic_read(uint64_t gpa, void* data, uint32_t len);
    void ioapic_write(uint64_t gpa, const void* data, uint32_t len);

    // A guest write that an ioeventfd (KVM_IOEVENTFD) takes: signals its eventfd and returns
    // true; the vCPU then goes on without an exit. `pio`: a port write, else MMIO.
    bool signal_ioeventfd(bool pio, uint64_t addr, const void* data, uint32_t len);

    // Timers of the VM (the PIT), serviced between slices by whichever vCPU runs; next_timer()
    // is the host time at which service is next due.
    void service_timers(int64_t now);
    int64_t next_timer() const;

    // The host time base of the guest's kvmclock.
    int64_t kvmclock_ns() const;

private:
    SoftVm();
    void update_pic_output_locked();
    void kick_pic_targets();
    void request_tlb_flush();

    int create_irqchip();
    int create_pit(const kvm_pit_config& config);
    int irq_line(kvm_irq_level& irq, bool with_status);
    int signal_msi(const kvm_msi& msi);
    int get_irqchip(kvm_irqchip& chip);
    int set_irqchip(const kvm_irqchip& chip);
    int set_memory_region(const kvm_userspace_memory_region& region);
    int get_dirty_log(const kvm_dirty_log& log);
    int clear_dirty_log(const kvm_clear_dirty_log& log);
    int enable_cap(const kvm_enable_cap& cap);
    int ioeventfd(const kvm_ioeventfd& request);
    int get_clock(kvm_clock_data& data);
    int set_clock(const kvm_clock_data& data);

    std::mutex m_lock;
    MemorySlots m_slots;
    SliceGate m_gate;
    uint64_t m_manual_dirty_protect = 0;  // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags
    uint64_t m_tss_addr = 0;
    uint64_t m_identity_map_addr = 0xfffbc000;

    std::atomic<bool> m_has_irqchip{false};
    std::mutex m_irqchip_lock;
    Pic m_pic;
    Ioapic m_ioapic;
    std::atomic<bool> m_pic_output{false};
    // Created at most once (KVM_CREATE_PIT2) and read lock-free by vCPU threads afterwards.
    std::unique_ptr<Pit> m_pit_storage;
    std::atomic<Pit*> m_pit{nullptr};

    // KVM_IOEVENTFD registrations (each holds its own duplicate of the eventfd, as KVM holds a
    // reference), guarded by m_ioeventfd_lock; m_has_ioeventfds spares vCPUs the lock while
    // there are none.
    struct IoEventFd {
        bool pio = false;
        uint64_t addr = 0;
        uint32_t len = 0;  // 0: a write of any length
        std::optional<uint64_t> datamatch;
        base::Fd fd;
    };
    std::mutex m_ioeventfd_lock;
    std::vector<IoEventFd> m_ioeventfds;
    std::atomic<bool> m_has_ioeventfds{false};

    mutable std::mutex m_clock_lock;
    int64_t m_kvmclock_offset = 0;

    std::array<std::atomic<SoftVcpu*>, k_max_vcpus> m_vcpus{};
    std::atomic<uint32_t> m_vcpu_count{0};
    std::array<std::unique_ptr<SoftVcpu>, k_max_vcpus> m_vcpu_storage;
};

// KVM_CHECK_EXTENSION, shared by the system and VM handles.
int soft_check_extension(long capability);

}  // namespace colod::kvm::soft
