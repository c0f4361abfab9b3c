// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/disk/overlay.h"

#include <algorithm>
#include <cstring>

namespace colod::core::disk {

base::Result<void> Overlay::read(uint64_t offset, std::span<std::byte> data) {
    std::lock_guard lock(m_mutex);
    if (m_through || m_pages.empty())
        return m_image->read(offset, data);
    // Runs of pages the overlay lacks are read from the image in one call each.
    size_t done = 0;
    while (done < data.size()) {
        uint64_t at = offset + done;
        uint64_t page = at / k_page, within = at % k_page;
        size_t piece = static_cast<size_t>(std::min<uint64_t>(k_page - within, data.size() - done));
        if (auto found = m_pages.find(page); found != m_pages.end()) {
            std::memcpy(data.data() + done, found->second.data() + within, piece);
            done += piece;
            continue;
        }
        size_t run = piece;
        while (done + run < data.size() && !m_pages.count((at + run) / k_page))
            run += static_cast<size_t>(std::min<uint64_t>(k_page, data.size() - done - run));
        TRY(m_image->read(at, data.subspan(done, run)));
        done += run;
    }
    return base::ok();
}

base::Result<void> Overlay::write(uint64_t offset, std::span<const std::byte> data) {
    std::lock_guard lock(m_mutex);
    if (m_through)
        return m_image->write(offset, data);
    size_t done = 0;
    while (done < data.size()) {
        uint64_t at = offset + done;
        uint64_t page = at / k_page, within = at % k_page;
        size_t piece = static_cast<size_t>(std::min<uint64_t>(k_page - within, data.size() - done));
        auto found = m_pages.find(page);
        if (found == m_pages.end()) {
            std::vector<std::byte> bytes(k_page);
            uint64_t length = std::min<uint64_t>(k_page, m_size - page * k_page);  // the disk's last page may be short
            if (piece < length)
                TRY(m_image->read(page * k_page, std::span(bytes).first(length)));
            found = m_pages.emplace(page, std::move(bytes)).first;
            m_bytes.fetch_add(k_page, std::memory_order_relaxed);
        }
        std::memcpy(found->second.data() + within, data.data() + done, piece);
        done += piece;
    }
    return base::ok();
}

base::Result<void> Overlay::flush() {
    std::lock_guard lock(m_mutex);
    if (m_through)
        return m_image->flush();
    return base::ok();
}

void Overlay::clear() {
    std::lock_guard lock(m_mutex);
    m_pages.clear();
    m_bytes.store(0, std::memory_order_relaxed);
}

base::Result<void> Overlay::commit() {
    std::lock_guard lock(m_mutex);
    if (m_through)
        return base::ok();
    std::vector<uint64_t> pages;
    pages.reserve(m_pages.size());
    for (const auto& [page, bytes] : m_pages)
        pages.push_back(page);
    std::sort(pages.begin(), pages.end());
    for (uint64_t page : pages) {
        uint64_t length = std::min<uint64_t>(k_page, m_size - page * k_page);
        TRY(m_image->write(page * k_page, std::span(m_pages[page]).first(length)));
    }
    TRY(m_image->flush());
    m_pages.clear();
    m_bytes.store(0, std::memory_order_relaxed);
    m_through = true;
    return base::ok();
}

bool Overlay::passing_through() const {
    std::lock_guard lock(m_mutex);
    return m_through;
}

}  // namespace colod::core::disk
