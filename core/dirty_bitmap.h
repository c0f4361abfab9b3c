// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <bit>
#include <cstdint>
#include <span>
#include <vector>

namespace colod::core {

// One bit per guest page, indexed by the global page index of GuestMemory.
class DirtyBitmap {
public:
    DirtyBitmap() = default;
    explicit DirtyBitmap(uint64_t pages) : m_pages(pages), m_words((pages + 63) / 64, 0) {}

    uint64_t pages() const { return m_pages; }
    std::span<uint64_t> words() { return m_words; }
    std::span<const uint64_t> words() const { return m_words; }

    void set(uint64_t page) { m_words[page / 64] |= uint64_t{1} << (page % 64); }
    bool test(uint64_t page) const { return (m_words[page / 64] >> (page % 64)) & 1; }
    void clear() { std::fill(m_words.begin(), m_words.end(), 0); }

    // Sets every bit that is set in `other` (same size).
    void merge(const DirtyBitmap& other) {
        for (size_t i = 0; i < m_words.size() && i < other.m_words.size(); ++i)
            m_words[i] |= other.m_words[i];
    }

    uint64_t count() const {
        uint64_t n = 0;
        for (uint64_t word : m_words)
            n += static_cast<uint64_t>(std::popcount(word));
        return n;
    }

    // Calls fn(page) for every set bit, in increasing order.
    template <typename Fn>
    void for_each(Fn&& fn) const {
        for (size_t i = 0; i < m_words.size(); ++i) {
            uint64_t word = m_words[i];
            while (word) {
                int bit = std::countr_zero(word);
                fn(static_cast<uint64_t>(i) * 64 + static_cast<uint64_t>(bit));
                word &= word - 1;
            }
        }
    }

    // The set pages as a sorted list.
    std::vector<uint64_t> to_list() const {
        std::vector<uint64_t> list;
        list.reserve(count());
        for_each([&](uint64_t page) { list.push_back(page); });
        return list;
    }

private:
    uint64_t m_pages = 0;
    std::vector<uint64_t> m_words;
};

}  // namespace colod::core
