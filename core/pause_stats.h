// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <mutex>
#include <vector>

namespace colod::core {

// The upper bounds, in microseconds, of the buckets a pause histogram counts in: 50 us to 1 s
// (a checkpoint pause on KVM is tens of microseconds to a few milliseconds; tens or hundreds of
// milliseconds mean a dirty set the interval cannot keep up with, or a nested machine).
inline constexpr std::array<uint64_t, 14> k_pause_buckets_us{50,    100,   250,    500,    1000,   2500,   5000,
                                                             10000, 25000, 50000, 100000, 250000, 500000, 1000000};

// Every sample since the start, by bucket: counts[i] holds the samples above bucket i-1's bound
// and at most bucket i's (not cumulative); samples above the last bound are only in count.
struct PauseHistogram {
    std::array<uint64_t, k_pause_buckets_us.size()> counts{};
    uint64_t count = 0;
    uint64_t sum_us = 0;
};

// Checkpoint pause durations: the last one, and p50 / p99 / max over the most recent window,
// and a histogram of all of them.
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
        auto bucket = std::lower_bound(k_pause_buckets_us.begin(), k_pause_buckets_us.end(), us);
        if (bucket != k_pause_buckets_us.end())
            ++m_histogram.counts[static_cast<size_t>(bucket - k_pause_buckets_us.begin())];
        ++m_histogram.count;
        m_histogram.sum_us += us;
    }

    struct Summary {
        uint64_t last = 0, p50 = 0, p99 = 0, max = 0;
    };
    Summary summary() const {
        Summary s;
        std::vector<uint64_t> sorted;
        {
            // Copied under the lock, sorted outside it: add() comes right after a pause.
            std::lock_guard lock(m_mutex);
            s.last = m_last;
            s.max = m_max;
            sorted = m_samples;
        }
        if (sorted.empty())
            return s;
        std::sort(sorted.begin(), sorted.end());
        s.p50 = sorted[sorted.size() / 2];
        s.p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
        return s;
    }

    PauseHistogram histogram() const {
        std::lock_guard lock(m_mutex);
        return m_histogram;
    }

private:
    mutable std::mutex m_mutex;
    std::vector<uint64_t> m_samples;
    size_t m_next = 0;
    uint64_t m_last = 0;
    uint64_t m_max = 0;
    PauseHistogram m_histogram;
};

}  // namespace colod::core
