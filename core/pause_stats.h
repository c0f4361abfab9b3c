// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace colod::core {

// Checkpoint pause durations: the last one, and p50 / p99 / max over the most recent window.
class PauseStats {
public:
    static constexpr size_t k_window = 1024;

    void add(uint64_t us) {
        std::lock_guard lock(m_mutex);
        if (m_samples.size() < k_window)
            m_samples.push_back(us);
        else
            m_samples[m_next] = us;
        m_next = (m_next + 1) % k_window;
        m_last = us;
        m_max = std::max(m_max, us);
    }

    struct Summary {
        uint64_t last = 0, p50 = 0, p99 = 0, max = 0;
    };
    Summary summary() const {
        std::lock_guard lock(m_mutex);
        Summary s;
        s.last = m_last;
        s.max = m_max;
        if (m_samples.empty())
            return s;
        std::vector<uint64_t> sorted = m_samples;
        std::sort(sorted.begin(), sorted.end());
        s.p50 = sorted[sorted.size() / 2];
        s.p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
        return s;
    }

private:
    mutable std::mutex m_mutex;
    std::vector<uint64_t> m_samples;
    size_t m_next = 0;
    uint64_t m_last = 0;
    uint64_t m_max = 0;
};

}  // namespace colod::core
