// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/output_comparator.h"

#include <algorithm>

namespace colod::core {

using Clock = std::chrono::steady_clock;

OutputComparator::OutputComparator(ReleaseFn release, std::chrono::microseconds max_lag, uint64_t max_held,
                                   std::function<void(Verdict)> on_verdict)
    : m_release(std::move(release)), m_max_lag(max_lag), m_max_held(max_held), m_on_verdict(std::move(on_verdict)) {}

void OutputComparator::try_match(std::string& out, Verdict& verdict) {
    if (m_diverged || m_open.empty() || m_secondary.empty())
        return;
    size_t n = std::min(m_open.size(), m_secondary.size());
    size_t common = 0;
    while (common < n && m_open[common] == m_secondary[common])
        ++common;
    if (common < n) {
        // Both guests wrote something here, and not the same thing.
        m_diverged = true;
        if (!m_verdict_pending) {
            m_verdict_pending = true;
            verdict = Verdict::Mismatch;
        }
    }
    if (common == 0)
        return;
    out.append(m_open, 0, common);
    m_open.erase(0, common);
    m_secondary.erase(0, common);
    m_held -= common;
    auto now = Clock::now();
    while (!m_open_times.empty() && m_open_times.front().first <= common) {
        m_latency.add(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(now - m_open_times.front().second).count()));
        m_open_times.pop_front();
    }
    for (auto& [end, time] : m_open_times)
        end -= common;
}

void OutputComparator::primary(std::span<const std::byte> bytes) {
    std::string out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing) {
                out.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
            } else {
                m_open.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
                m_open_times.emplace_back(m_open.size(), Clock::now());
                m_held += bytes.size();
                try_match(out, verdict);
                if (m_held > m_max_held && !m_verdict_pending) {
                    m_verdict_pending = true;
                    verdict = Verdict::Behind;
                }
            }
        }
        if (!out.empty())
            m_release(std::as_bytes(std::span(out.data(), out.size())));
    }
    if (verdict != Verdict::Fine && m_on_verdict)
        m_on_verdict(verdict);
}

void OutputComparator::secondary(uint64_t epoch, std::string_view bytes) {
    std::string out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing || epoch != m_epoch || m_diverged)
                return;  // an old epoch's words, or nothing to compare with until a checkpoint
            m_secondary.append(bytes);
            try_match(out, verdict);
        }
        if (!out.empty())
            m_release(std::as_bytes(std::span(out.data(), out.size())));
    }
    if (verdict != Verdict::Fine && m_on_verdict)
        m_on_verdict(verdict);
}

void OutputComparator::check_lag() {
    bool behind = false;
    {
        std::lock_guard lock(m_mutex);
        if (m_comparing && !m_verdict_pending && !m_open_times.empty() &&
            Clock::now() - m_open_times.front().second > m_max_lag) {
            m_verdict_pending = true;
            behind = true;
        }
    }
    if (behind && m_on_verdict)
        m_on_verdict(Verdict::Behind);
}

void OutputComparator::captured(uint64_t seq) {
    std::lock_guard lock(m_mutex);
    if (!m_comparing)
        return;
    if (!m_open.empty())
        m_sealed.push_back(Sealed{seq, std::move(m_open)});
    m_open.clear();
    m_open_times.clear();
    m_secondary.clear();
    m_diverged = false;
    m_verdict_pending = false;
    m_epoch = seq;
}

void OutputComparator::committed(uint64_t seq) {
    std::lock_guard order(m_release_mutex);
    std::string out;
    {
        std::lock_guard lock(m_mutex);
        while (!m_sealed.empty() && m_sealed.front().seq <= seq) {
            m_held -= m_sealed.front().bytes.size();
            out += m_sealed.front().bytes;
            m_sealed.pop_front();
        }
    }
    if (!out.empty())
        m_release(std::as_bytes(std::span(out.data(), out.size())));
}

void OutputComparator::release_all() {
    std::lock_guard order(m_release_mutex);
    std::string out;
    {
        std::lock_guard lock(m_mutex);
        for (auto& sealed : m_sealed)
            out += sealed.bytes;
        out += m_open;
        m_sealed.clear();
        m_open.clear();
        m_open_times.clear();
        m_secondary.clear();
        m_held = 0;
        m_comparing = false;
        m_diverged = false;
        m_verdict_pending = false;
    }
    if (!out.empty())
        m_release(std::as_bytes(std::span(out.data(), out.size())));
}

void OutputComparator::start(uint64_t epoch) {
    std::lock_guard lock(m_mutex);
    m_comparing = true;
    m_epoch = epoch;
}

uint64_t OutputComparator::held_bytes() const {
    // Without the lock: the UART asks from a vCPU thread while it holds its own lock, and the
    // release path takes this one before the console's (which feeds the UART).
    return m_held.load(std::memory_order_relaxed);
}

}  // namespace colod::core
