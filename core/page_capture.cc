// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/page_capture.h"

#include <algorithm>
#include <cstring>

namespace colod::core {

void PageCapture::reserve_ahead(uint64_t guest_bytes) {
    // Twice the last dirty set, but never more than the guest has: a capture cannot exceed it.
    if (!m_data.ensure(std::min<uint64_t>(2 * m_pages.size() * k_page_size, guest_bytes)))
        return;  // the next capture tries again, inside its pause
}

size_t PageCapture::capture(const GuestMemory& memory, const DirtyBitmap& dirty) {
    m_pages.clear();
    dirty.for_each([&](uint64_t page) { m_pages.push_back(page); });
    size_t before = m_data.capacity();
    if (!m_data.ensure(m_pages.size() * k_page_size))
        std::abort();  // out of memory with the guest paused: fail-stop, the secondary takes over
    std::byte* out = m_data.data();
    for (uint64_t page : m_pages) {
        std::memcpy(out, memory.page(page), k_page_size);
        out += k_page_size;
    }
    return m_data.capacity() - before;
}

std::span<const std::byte> PageCapture::bytes_of(uint64_t page) const {
    auto it = std::lower_bound(m_pages.begin(), m_pages.end(), page);
    return page_bytes(static_cast<size_t>(it - m_pages.begin()));
}

}  // namespace colod::core
