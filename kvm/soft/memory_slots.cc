// SPDX-License-Identifier: GPL-2.0-or-later
#include "kvm/soft/memory_slots.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace colod::kvm::soft {

namespace {

// KVM_USER_MEM_SLOTS on x86: the highest slot id userspace may use, plus one.
constexpr uint32_t k_user_slots = 32764;

std::unique_ptr<std::atomic<uint64_t>[]> new_bitmap(uint64_t pages, DirtyInit init) {
    uint64_t words = (pages + 63) / 64;
    auto bitmap = std::make_unique<std::atomic<uint64_t>[]>(words);
    for (uint64_t i = 0; i < words; ++i)
        bitmap[i].store(0, std::memory_order_relaxed);
    if (init == DirtyInit::AllSet) {
        for (uint64_t page = 0; page < pages; page += 64) {
            uint64_t left = pages - page;
            bitmap[page / 64].store(left >= 64 ? ~0ull : (1ull << left) - 1, std::memory_order_relaxed);
        }
    }
    return bitmap;
}

}  // namespace

MemorySlot* MemorySlots::by_id(uint32_t id) {
    for (auto& slot : m_slots)
        if (slot->id == id)
            return slot.get();
    return nullptr;
}

bool MemorySlots::overlaps(uint32_t id, uint64_t gpa, uint64_t size) const {
    for (const auto& slot : m_slots) {
        if (slot->id == id)
            continue;
        if (gpa < slot->gpa + slot->size && slot->gpa < gpa + size)
            return true;
    }
    return false;
}

int MemorySlots::set_region(const kvm_userspace_memory_region& region, DirtyInit init) {
    // The checks and their order follow KVM's __kvm_set_memory_region().
    if (region.flags & ~static_cast<uint32_t>(KVM_MEM_LOG_DIRTY_PAGES))
        return EINVAL;  // KVM_MEM_READONLY is not offered (KVM_CAP_READONLY_MEM = 0)
    if ((region.slot >> 16) != 0 || (region.slot & 0xffff) >= k_user_slots)
        return EINVAL;  // only address space 0 (no SMM address space)
    if ((region.memory_size & (k_page_size - 1)) || (region.guest_phys_addr & (k_page_size - 1)) ||
        (region.userspace_addr & (k_page_size - 1)))
        return EINVAL;
    if (region.guest_phys_addr + region.memory_size < region.guest_phys_addr)
        return EINVAL;
    if (region.memory_size != 0 && region.userspace_addr == 0)
        return EINVAL;  // KVM's access_ok() would refuse a NULL range as well

    m_last.store(nullptr, std::memory_order_relaxed);
    MemorySlot* old = by_id(region.slot);
    if (region.memory_size == 0) {
        if (!old)
            return EINVAL;
        std::erase_if(m_slots, [&](const auto& slot) { return slot.get() == old; });
        return 0;
    }

    if (old) {
        if (region.userspace_addr != reinterpret_cast<uintptr_t>(old->host) || region.memory_size != old->size)
            return EINVAL;
        bool move = region.guest_phys_addr != old->gpa;
        if (!move && region.flags == old->flags)
            return 0;
        if (move && overlaps(old->id, region.guest_phys_addr, region.memory_size))
            return EEXIST;
        old->gpa = region.guest_phys_addr;
        if (!(region.flags & KVM_MEM_LOG_DIRTY_PAGES))
            old->dirty.reset();
        else if (!old->dirty)
            old->dirty = new_bitmap(old->pages(), init);
        old->flags = region.flags;
        return 0;
    }

    if (overlaps(region.slot, region.guest_phys_addr, region.memory_size))
        return EEXIST;
    auto slot = std::make_unique<MemorySlot>();
    slot->id = region.slot;
    slot->flags = region.flags;
    slot->gpa = region.guest_phys_addr;
    slot->size = region.memory_size;
    // SAFETY: userspace_addr is the caller's mapping of memory_size bytes (KVM's contract); the
    // guest reads and writes it directly, as hardware does with real KVM.
    slot->host = reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(region.userspace_addr));
    if (region.flags & KVM_MEM_LOG_DIRTY_PAGES)
        slot->dirty = new_bitmap(slot->pages(), init);
    m_slots.push_back(std::move(slot));
    return 0;
}

const MemorySlot* MemorySlots::find(uint64_t gpa) const {
    MemorySlot* last = m_last.load(std::memory_order_relaxed);
    if (last && last->contains(gpa))
        return last;
    for (const auto& slot : m_slots) {
        if (slot->contains(gpa)) {
            m_last.store(slot.get(), std::memory_order_relaxed);
            return slot.get();
        }
    }
    return nullptr;
}

uint8_t* MemorySlots::page(uint64_t gpa, bool write) {
    const MemorySlot* slot = find(gpa);
    if (!slot)
        return nullptr;
    uint64_t page = (gpa - slot->gpa) >> k_page_shift;
    if (write && slot->dirty) {
        std::atomic<uint64_t>& word = slot->dirty[page / 64];
        uint64_t bit = 1ull << (page % 64);
        if (!(word.load(std::memory_order_relaxed) & bit))
            word.fetch_or(bit, std::memory_order_relaxed);
    }
    return slot->host + (page << k_page_shift);
}

int MemorySlots::dirty_log(uint32_t slot_id, uint64_t* out, HarvestMode mode) {
    MemorySlot* slot = by_id(slot_id);
    if (!slot || !slot->dirty)
        return ENOENT;
    for (uint64_t i = 0; i < slot->bitmap_words(); ++i) {
        out[i] = mode == HarvestMode::CopyAndClear ? slot->dirty[i].exchange(0, std::memory_order_relaxed)
                                                   : slot->dirty[i].load(std::memory_order_relaxed);
    }
    return 0;
}

int MemorySlots::clear_dirty_log(uint32_t slot_id, uint64_t first_page, uint32_t num_pages, const uint64_t* bitmap) {
    // KVM's kvm_clear_dirty_log_protect(): ranges start on a 64-page boundary and cover whole
    // 64-page words, except that the last range may end exactly at the end of the slot.
    if (first_page & 63)
        return EINVAL;
    MemorySlot* slot = by_id(slot_id);
    if (!slot || !slot->dirty)
        return ENOENT;
    uint64_t pages = slot->pages();
    if (first_page > pages || num_pages > pages - first_page ||
        (num_pages < pages - first_page && (num_pages & 63)))
        return EINVAL;
    uint64_t words = (static_cast<uint64_t>(num_pages) + 63) / 64;
    for (uint64_t i = 0; i < words; ++i) {
        uint64_t mask = bitmap[i];
        uint64_t remaining = num_pages - i * 64;
        if (remaining < 64)
            mask &= (1ull << remaining) - 1;
        if (mask)
            slot->dirty[first_page / 64 + i].fetch_and(~mask, std::memory_order_relaxed);
    }
    return 0;
}

}  // namespace colod::kvm::soft
