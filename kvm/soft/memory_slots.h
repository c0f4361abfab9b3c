// SPDX-License-Identifier: GPL-2.0-or-later
// Guest memory slots of the software VM (KVM_SET_USER_MEMORY_REGION) and their dirty bitmaps
// (KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG), with KVM's rules and errno values.
//
// Threading: lookups and dirty marking happen on vCPU threads inside interpreter slices;
// changes to the slot table and the clearing of dirty bits happen only inside a
// SliceGate::Exclusive section (the VM takes care of that), so the table needs no lock of its
// own. Dirty bits are atomic words: a vCPU marks with fetch_or while another thread may copy
// the bitmap (manual-protect GET_DIRTY_LOG does not clear and runs concurrently).
#pragma once

#include "kvm/kernel_abi.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

namespace colod::kvm::soft {

inline constexpr uint64_t k_page_size = 4096;
inline constexpr unsigned k_page_shift = 12;

struct MemorySlot {
    uint32_t id = 0;  // as in kvm_userspace_memory_region.slot (address space 0 only)
    uint32_t flags = 0;
    uint64_t gpa = 0;
    uint64_t size = 0;
    uint8_t* host = nullptr;
    // One bit per page, in 64-bit words; null unless KVM_MEM_LOG_DIRTY_PAGES is set.
    std::unique_ptr<std::atomic<uint64_t>[]> dirty;

    uint64_t pages() const { return size >> k_page_shift; }
    uint64_t bitmap_words() const { return (pages() + 63) / 64; }
    bool contains(uint64_t address) const { return address - gpa < size; }
};

// How a freshly enabled dirty bitmap starts (KVM_DIRTY_LOG_INITIALLY_SET).
enum class DirtyInit { Clear, AllSet };
// Whether KVM_GET_DIRTY_LOG also clears what it reports (legacy) or not (manual protect).
enum class HarvestMode { CopyAndClear, CopyOnly };

class MemorySlots {
public:
    // KVM_SET_USER_MEMORY_REGION. Returns 0 or a positive errno (EINVAL, EEXIST).
    int set_region(const kvm_userspace_memory_region& region, DirtyInit init);

    // The slot covering `gpa`, or null. Not synchronised: vCPU slices or Exclusive sections only.
    const MemorySlot* find(uint64_t gpa) const;

    // Host address of the page containing `gpa`, marking it dirty for writes; null if no slot.
    uint8_t* page(uint64_t gpa, bool write);

    // KVM_GET_DIRTY_LOG into `out` (bitmap_words() words). 0 or ENOENT.
    int dirty_log(uint32_t slot_id, uint64_t* out, HarvestMode mode);
    // KVM_CLEAR_DIRTY_LOG. 0, ENOENT or EINVAL.
    int clear_dirty_log(uint32_t slot_id, uint64_t first_page, uint32_t num_pages, const uint64_t* bitmap);

    size_t count() const { return m_slots.size(); }

private:
    MemorySlot* by_id(uint32_t id);
    bool overlaps(uint32_t id, uint64_t gpa, uint64_t size) const;

    std::vector<std::unique_ptr<MemorySlot>> m_slots;
    // The slot that answered the last lookup: guests touch one slot almost always.
    mutable std::atomic<MemorySlot*> m_last{nullptr};
};

}  // namespace colod::kvm::soft
