// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/output_buffer.h"

namespace colod::core {

OutputBuffer::OutputBuffer(std::string name, Framing framing, ReleaseFn release, uint64_t limit,
                           std::function<void()> on_limit)
    : m_name(std::move(name)),
      m_framing(framing),
      m_release(std::move(release)),
      m_limit(limit),
      m_on_limit(std::move(on_limit)) {}

void OutputBuffer::put(std::span<const std::byte> record) {
    bool signal = false;
    {
        std::unique_lock lock(m_mutex);
        if (!m_holding) {
            // Pass-through: release under the release mutex, taken before dropping ours so
            // that records cannot overtake each other.
            std::lock_guard order(m_release_mutex);
            lock.unlock();
            m_release(record);
            return;
        }
        if (m_framing == Framing::Stream && !m_open.empty())
            m_open.back().insert(m_open.back().end(), record.begin(), record.end());  // a stream has no boundaries
        else
            m_open.emplace_back(record.begin(), record.end());
        m_held += record.size();
        if (m_held >= m_limit && !m_limit_signalled) {
            m_limit_signalled = true;
            signal = true;
        }
    }
    if (signal && m_on_limit)
        m_on_limit();
}

void OutputBuffer::captured(uint64_t seq) {
    std::lock_guard lock(m_mutex);
    if (!m_holding || m_open.empty())
        return;
    m_sealed.push_back(Epoch{seq, std::move(m_open)});
    m_open.clear();
}

void OutputBuffer::release(std::vector<Epoch>& epochs, std::unique_lock<std::mutex>& lock) {
    std::lock_guard order(m_release_mutex);
    lock.unlock();
    for (const auto& epoch : epochs)
        for (const auto& record : epoch.records)
            m_release(record);
}

void OutputBuffer::committed(uint64_t seq) {
    std::unique_lock lock(m_mutex);
    std::vector<Epoch> out;
    while (!m_sealed.empty() && m_sealed.front().seq <= seq) {
        for (const auto& record : m_sealed.front().records)
            m_held -= record.size();
        out.push_back(std::move(m_sealed.front()));
        m_sealed.pop_front();
    }
    if (m_held < m_limit)
        m_limit_signalled = false;
    release(out, lock);
}

void OutputBuffer::release_all() {
    std::unique_lock lock(m_mutex);
    std::vector<Epoch> out(std::make_move_iterator(m_sealed.begin()), std::make_move_iterator(m_sealed.end()));
    m_sealed.clear();
    if (!m_open.empty())
        out.push_back(Epoch{0, std::move(m_open)});
    m_open.clear();
    m_held = 0;
    m_limit_signalled = false;
    m_holding = false;
    release(out, lock);
}

void OutputBuffer::discard_all() {
    std::lock_guard lock(m_mutex);
    m_sealed.clear();
    m_open.clear();
    m_held = 0;
    m_limit_signalled = false;
    m_holding = false;
}

void OutputBuffer::protect(uint64_t) {
    std::lock_guard lock(m_mutex);
    m_holding = true;
}

uint64_t OutputBuffer::held_bytes() const {
    // Without the lock: the UART asks from a vCPU thread while it holds its own lock, and the
    // release path takes this one before the console's (which feeds the UART).
    return m_held.load(std::memory_order_relaxed);
}

bool OutputBuffer::holding() const {
    std::lock_guard lock(m_mutex);
    return m_holding;
}

}  // namespace colod::core
