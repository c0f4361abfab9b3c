// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/output_comparator.h"

#include <algorithm>

namespace colod::core {

namespace {

std::string_view text(std::span<const std::byte> bytes) {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace

OutputComparator::OutputComparator(std::string name, Framing framing, ReleaseFn release,
                                   std::chrono::microseconds max_lag, uint64_t max_held,
                                   std::function<void(Verdict)> on_verdict)
    : m_name(std::move(name)),
      m_framing(framing),
      m_release(std::move(release)),
      m_max_lag(max_lag),
      m_max_held(max_held),
      m_on_verdict(std::move(on_verdict)) {}

void OutputComparator::diverged(Verdict& verdict) {
    m_diverged = true;
    if (!m_verdict_pending) {
        m_verdict_pending = true;
        verdict = Verdict::Mismatch;
    }
}

void OutputComparator::match_stream(std::vector<std::string>& out) {
    // The secondary's bytes, as one stream, against the primary's records.
    std::string& other = m_secondary.front();
    std::string released;
    size_t used = 0;
    auto now = Clock::now();
    while (!m_open.empty() && used < other.size()) {
        const std::string& record = m_open.front().bytes;
        size_t n = std::min(record.size() - m_open_offset, other.size() - used);
        size_t common = 0;
        while (common < n && record[m_open_offset + common] == other[used + common])
            ++common;
        released.append(record, m_open_offset, common);
        used += common;
        m_open_offset += common;
        if (common < n)
            break;  // they differ here (the caller sees both sides left over)
        if (m_open_offset == record.size()) {
            m_latency.add(static_cast<uint64_t>(
                std::chrono::duration_cast<std::chrono::microseconds>(now - m_open.front().at).count()));
            m_open.pop_front();
            m_open_offset = 0;
        }
    }
    other.erase(0, used);
    m_held -= released.size();
    if (!released.empty())
        out.push_back(std::move(released));
}

void OutputComparator::match_datagrams(std::vector<std::string>& out) {
    auto now = Clock::now();
    while (!m_open.empty() && !m_secondary.empty() && m_open.front().bytes == m_secondary.front()) {
        m_latency.add(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(now - m_open.front().at).count()));
        m_held -= m_open.front().bytes.size();
        out.push_back(std::move(m_open.front().bytes));
        m_open.pop_front();
        m_secondary.pop_front();
    }
}

void OutputComparator::try_match(std::vector<std::string>& out, Verdict& verdict) {
    if (m_diverged || m_open.empty() || m_secondary.empty())
        return;
    if (m_framing == Framing::Stream)
        match_stream(out);
    else
        match_datagrams(out);
    // Output left on both sides: the two guests produced something at the same place, and not
    // the same thing.
    bool secondary_left = !m_secondary.empty() && !m_secondary.front().empty();
    if (!m_open.empty() && secondary_left)
        diverged(verdict);
}

void OutputComparator::queue_behind_sealed(std::vector<std::string>& out) {
    // The secondary's guest runs an epoch once it has loaded the checkpoint that opened it, so
    // its output can match the primary's before the primary has seen that checkpoint commit:
    // what was sealed before must go out first.
    if (m_sealed.empty() || out.empty())
        return;
    for (const auto& record : out)
        m_held += record.size();
    m_sealed.push_back(Sealed{k_matched, std::move(out)});
    out.clear();
}

void OutputComparator::release(std::vector<std::string>& out) {
    for (const auto& record : out)
        m_release(std::as_bytes(std::span(record.data(), record.size())));
}

void OutputComparator::put(std::span<const std::byte> record) {
    std::vector<std::string> out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing) {
                out.emplace_back(text(record));
            } else {
                m_open.push_back(Record{std::string(text(record)), Clock::now()});
                m_held += record.size();
                try_match(out, verdict);
                queue_behind_sealed(out);
                if (m_held > m_max_held && !m_verdict_pending) {
                    m_verdict_pending = true;
                    verdict = Verdict::Behind;
                }
            }
        }
        release(out);
    }
    if (verdict != Verdict::Fine && m_on_verdict)
        m_on_verdict(verdict);
}

void OutputComparator::secondary(uint64_t epoch, std::span<const std::byte> record) {
    std::vector<std::string> out;
    Verdict verdict = Verdict::Fine;
    {
        std::lock_guard order(m_release_mutex);
        {
            std::lock_guard lock(m_mutex);
            if (!m_comparing || epoch != m_epoch || m_diverged)
                return;  // an old epoch's output, or nothing to compare with until a checkpoint
            if (m_framing == Framing::Stream && !m_secondary.empty())
                m_secondary.front().append(text(record));
            else
                m_secondary.emplace_back(text(record));
            try_match(out, verdict);
            queue_behind_sealed(out);
        }
        release(out);
    }
    if (verdict != Verdict::Fine && m_on_verdict)
        m_on_verdict(verdict);
}

void OutputComparator::check_lag() {
    bool behind = false;
    {
        std::lock_guard lock(m_mutex);
        if (m_comparing && !m_verdict_pending && !m_open.empty() && Clock::now() - m_open.front().at > m_max_lag) {
            m_verdict_pending = true;
            behind = true;
        }
    }
    if (behind && m_on_verdict)
        m_on_verdict(Verdict::Behind);
}

std::vector<std::string> OutputComparator::take_open() {
    std::vector<std::string> records;
    for (auto& record : m_open) {
        if (m_open_offset) {  // only the front record can be partly released
            record.bytes.erase(0, m_open_offset);
            m_open_offset = 0;
        }
        records.push_back(std::move(record.bytes));
    }
    m_open.clear();
    return records;
}

void OutputComparator::reset_epoch(uint64_t epoch) {
    m_open.clear();
    m_open_offset = 0;
    m_secondary.clear();
    m_diverged = false;
    m_verdict_pending = false;
    m_epoch = epoch;
}

void OutputComparator::captured(uint64_t seq) {
    std::lock_guard lock(m_mutex);
    if (!m_comparing)
        return;
    if (!m_open.empty())
        m_sealed.push_back(Sealed{seq, take_open()});
    reset_epoch(seq);
}

void OutputComparator::committed(uint64_t seq) {
    std::lock_guard order(m_release_mutex);
    std::vector<std::string> out;
    {
        std::lock_guard lock(m_mutex);
        while (!m_sealed.empty() && m_sealed.front().seq <= seq) {
            for (auto& record : m_sealed.front().records) {
                m_held -= record.size();
                out.push_back(std::move(record));
            }
            m_sealed.pop_front();
        }
    }
    release(out);
}

void OutputComparator::release_all() {
    std::lock_guard order(m_release_mutex);
    std::vector<std::string> out;
    {
        std::lock_guard lock(m_mutex);
        for (auto& sealed : m_sealed)
            for (auto& record : sealed.records)
                out.push_back(std::move(record));
        for (auto& record : take_open())
            out.push_back(std::move(record));
        stop_comparing();
    }
    release(out);
}

void OutputComparator::discard_all() {
    std::lock_guard lock(m_mutex);
    stop_comparing();
}

void OutputComparator::stop_comparing() {
    m_sealed.clear();
    reset_epoch(m_epoch);
    m_held = 0;
    m_comparing = false;
}

void OutputComparator::protect(uint64_t epoch) {
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
