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
// guest can run on while they are sent. The buffer is kept between checkpoints and only grows,
// so a steady dirty rate costs no allocation.
class PageCapture {
public:
    // Copies every page set in `dirty` (global page indices) out of `memory`. The machine must be
    // paused: the copy is the checkpoint's view of memory. Growing the buffer here would fault
    // its pages in while the guest waits, so callers keep it ahead with reserve_ahead().
    // Returns how many bytes the buffer had to grow by here (0 when it was big enough).
    size_t capture(const GuestMemory& memory, const DirtyBitmap& dirty);
    // Outside the pause: makes the buffer (allocated and touched) twice the last capture, up to
    // the guest's size, so a rising dirty rate does not pay for page faults inside the next pause.
    void reserve_ahead(uint64_t guest_bytes);
    // Outside the pause: room for `bytes` at least, allocated and touched.
    void reserve(size_t bytes) { (void)m_data.ensure(bytes); }

    // Sorted page indices of the last capture.
    std::span<const uint64_t> pages() const { return m_pages; }
    // The copied bytes of the i-th captured page.
    std::span<const std::byte> page_bytes(size_t i) const {
        return {m_data.data() + i * k_page_size, k_page_size};
    }
    // The bytes of a captured page by its global index (the page must be in pages()).
    std::span<const std::byte> bytes_of(uint64_t page) const;
    size_t size() const { return m_pages.size(); }

private:
    std::vector<uint64_t> m_pages;
    PageBuffer m_data;
};

}  // namespace colod::core
