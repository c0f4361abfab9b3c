// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/page_capture.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace colod::core {
namespace {

alignas(64) const std::byte k_zero_page[k_page_size]{};

bool all_zero(const std::byte* page) {
    // Word by word: a page with data usually shows it in its first words, so the common case
    // reads one cache line before the copy.
    const auto* words = reinterpret_cast<const uint64_t*>(page);
    for (size_t i = 0; i < k_page_size / sizeof(uint64_t); ++i)
        if (words[i] != 0)
            return false;
    return true;
}

}  // namespace

void PageCapture::reserve_ahead(uint64_t guest_bytes) {
    // Twice the last capture's copied pages, but never more than the guest has.
    if (!m_data.ensure(std::min<uint64_t>(2 * m_copied * k_page_size, guest_bytes)))
        return;  // the next capture tries again, inside its pause
}

size_t PageCapture::copy_nonzero(const GuestMemory& memory) {
    size_t room = m_data.capacity() / k_page_size;
    size_t nonzero = 0;
    for (size_t i = 0; i < m_pages.size(); ++i) {
        const std::byte* page = memory.page(m_pages[i]);
        if (all_zero(page)) {
            m_slots[i] = k_zero_slot;
            continue;
        }
        if (nonzero < room)
            std::memcpy(m_data.data() + nonzero * k_page_size, page, k_page_size);
        m_slots[i] = static_cast<uint32_t>(nonzero++);
    }
    return nonzero;
}

size_t PageCapture::capture(const GuestMemory& memory, const DirtyBitmap& dirty) {
    m_pages.clear();
    dirty.for_each([&](uint64_t page) { m_pages.push_back(page); });
    m_slots.resize(m_pages.size());
    size_t before = m_data.capacity();
    m_copied = copy_nonzero(memory);
    if (m_copied * k_page_size > before) {
        // The buffer was too small: grow it (which drops its contents) and copy again. The
        // guest is still paused, so the pages are the same.
        if (!m_data.ensure(m_copied * k_page_size))
            std::abort();  // out of memory with the guest paused: fail-stop, the secondary takes over
        m_copied = copy_nonzero(memory);
    }
    return m_data.capacity() - before;
}

std::span<const std::byte> PageCapture::page_bytes(size_t i) const {
    if (m_slots[i] == k_zero_slot)
        return {k_zero_page, k_page_size};
    return {m_data.data() + size_t{m_slots[i]} * k_page_size, k_page_size};
}

std::span<const std::byte> PageCapture::bytes_of(uint64_t page) const {
    auto it = std::lower_bound(m_pages.begin(), m_pages.end(), page);
    return page_bytes(static_cast<size_t>(it - m_pages.begin()));
}

}  // namespace colod::core
