// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/dirty_bitmap.h"
#include "core/guest_memory.h"
#include "core/page_buffer.h"

namespace colod::core {

// The dirty pages of one checkpoint, copied out of guest RAM while the machine is paused so the
// guest can run on while they are sent. Pages that are all zero are noted, not copied (a guest
// that rebooted in place, its RAM cleared, dirties all of it at once: the buffer holds only what
// it wrote since). The buffer is kept between checkpoints and only grows, so a steady dirty rate
// costs no allocation.
class PageCapture {
public:
    // Copies every page set in `dirty` (global page indices) out of `memory`. The machine must be
    // paused: the copy is the checkpoint's view of memory. Growing the buffer here would fault
    // its pages in while the guest waits, so callers keep it ahead with reserve_ahead().
    // Returns how many bytes the buffer had to grow by here (0 when it was big enough).
    size_t capture(const GuestMemory& memory, const DirtyBitmap& dirty);
    // Outside the pause: makes the buffer (allocated and touched) twice the last capture's
    // non-zero pages, up to the guest's size, so a rising dirty rate does not pay for page faults
    // inside the next pause.
    void reserve_ahead(uint64_t guest_bytes);
    // Outside the pause: room for `bytes` at least, allocated and touched.
    void reserve(size_t bytes) { (void)m_data.ensure(bytes); }

    // Sorted page indices of the last capture, zero pages included.
    std::span<const uint64_t> pages() const { return m_pages; }
    // The captured bytes of the i-th captured page (a shared zero page for a zero page).
    std::span<const std::byte> page_bytes(size_t i) const;
    // The bytes of a captured page by its global index (the page must be in pages()).
    std::span<const std::byte> bytes_of(uint64_t page) const;
    size_t size() const { return m_pages.size(); }
    // How many of the last capture's pages were all zero (and so not copied).
    size_t zero_pages() const { return m_pages.size() - m_copied; }
    size_t capacity() const { return m_data.capacity(); }

private:
    static constexpr uint32_t k_zero_slot = UINT32_MAX;
    // Copies the non-zero pages into the buffer, as far as it reaches; returns how many there are.
    size_t copy_nonzero(const GuestMemory& memory);

    std::vector<uint64_t> m_pages;
    std::vector<uint32_t> m_slots;  // per page: its place in the buffer, or k_zero_slot
    size_t m_copied = 0;
    PageBuffer m_data;
};

}  // namespace colod::core
