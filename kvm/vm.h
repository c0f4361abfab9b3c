// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include "kvm/kernel_abi.h"

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "base/result.h"
#include "kvm/handle.h"
#include "kvm/state.h"

namespace colod::kvm {

class System;
class Vcpu;

struct MemorySlot {
    uint32_t slot = 0;
    uint64_t guest_phys = 0;  // page-aligned
    uint64_t size = 0;        // page-aligned; 0 deletes the slot
    void* host = nullptr;     // page-aligned host mapping of `size` bytes
    bool log_dirty = false;
};

enum class DirtyLogMode {
    Legacy,         // KVM_GET_DIRTY_LOG fetches and clears in one step
    ManualProtect,  // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET only reads, CLEAR re-arms
};

// One virtual machine: memory slots, the in-kernel irqchip and PIT, the clock, the dirty log.
class Vm {
public:
    Vm(Vm&&) = default;
    Vm& operator=(Vm&&) = default;
    ~Vm();

    // KVM_CREATE_IRQCHIP then KVM_CREATE_PIT2; must come before any vCPU (KVM's order).
    base::Result<void> create_irqchip_and_pit();

    base::Result<void> set_memory_slot(const MemorySlot& slot);

    // Turns on manual dirty-log protection when the kernel has it; returns the mode in use.
    base::Result<DirtyLogMode> enable_manual_dirty_log();
    DirtyLogMode dirty_log_mode() const { return m_dirty_mode; }

    // Fills `bitmap` (one bit per page of the slot, 64-bit words) with the pages written since
    // the last harvest. In Legacy mode this also re-arms logging; in ManualProtect mode call
    // clear_dirty_log() for the pages you have taken.
    base::Result<void> dirty_log(uint32_t slot, std::span<uint64_t> bitmap);
    // Re-arms logging for the set bits of `bitmap`, which covers pages [first_page,
    // first_page + 64 * bitmap.size()). first_page must be a multiple of 64.
    base::Result<void> clear_dirty_log(uint32_t slot, uint64_t first_page, uint64_t num_pages,
                                       std::span<uint64_t> bitmap);

    // Sets an interrupt line (GSI) of the in-kernel irqchip. Thread-safe (KVM serialises).
    base::Result<void> irq_line(uint32_t gsi, bool level);

    // KVM_IOEVENTFD: a guest's write of exactly `len` bytes (1, 2, 4 or 8) holding `value` to
    // MMIO address `addr` signals the eventfd `fd` inside KVM, and the vCPU goes on without
    // exiting to colod; any other write there still exits. KVM holds its own reference to the
    // eventfd. Fails (Unsupported) without KVM_CAP_IOEVENTFD.
    base::Result<void> assign_ioeventfd(uint64_t addr, uint32_t len, uint64_t value, int fd);
    // Undoes one assign_ioeventfd() with the same arguments.
    base::Result<void> deassign_ioeventfd(uint64_t addr, uint32_t len, uint64_t value, int fd);

    // Capture and restore of the in-kernel devices and the clock. The VM must be paused (no
    // vCPU in KVM_RUN) so that the pieces are consistent with each other and with the vCPUs.
    base::Result<VmState> save_state();
    // Restores in KVM's working order: clock, irqchip (PIC master, PIC slave, IOAPIC), PIT.
    // The guest's clock reads what it read at the capture, plus `advance`.
    base::Result<void> load_state(const VmState& state, std::chrono::nanoseconds advance = {});

    base::Result<Vcpu> create_vcpu(uint32_t id);

    // KVM_CHECK_EXTENSION on the VM object (some capabilities are per VM, e.g. XSAVE2's size).
    int check_extension(long capability);

private:
    friend class System;
    Vm(std::unique_ptr<Handle> handle, size_t vcpu_mmap_size, std::vector<uint32_t> msr_index_list)
        : m_handle(std::move(handle)), m_vcpu_mmap_size(vcpu_mmap_size), m_msr_index_list(std::move(msr_index_list)) {}

    std::unique_ptr<Handle> m_handle;
    size_t m_vcpu_mmap_size;
    std::vector<uint32_t> m_msr_index_list;
    DirtyLogMode m_dirty_mode = DirtyLogMode::Legacy;
};

}  // namespace colod::kvm
