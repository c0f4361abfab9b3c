// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/output_channel.h"

namespace colod::core {

// Checkpoint mode's output channel: records held until the standby has the state that produced
// them.
//
// Records arrive from device threads and belong to the open epoch. When a checkpoint is
// captured (machine paused), captured(k) closes the open epoch as checkpoint k: everything held
// so far was produced by a state no newer than checkpoint k. committed(k), on VMSTATE_LOADED(k),
// hands every sealed epoch <= k to the release function, record by record, in order.
// release_all() is for the unprotected case (no standby): everything goes out at once, and while
// unprotected new records go straight out.
class OutputBuffer final : public OutputChannel {
public:
    // `limit`: when the held bytes reach it, `on_limit` is called (from the device thread that
    // crossed it) so the engine can force a checkpoint.
    OutputBuffer(std::string name, Framing framing, ReleaseFn release, uint64_t limit, std::function<void()> on_limit);

    std::string_view name() const override { return m_name; }
    void put(std::span<const std::byte> record) override;
    void protect(uint64_t epoch) override;
    void captured(uint64_t seq) override;
    void committed(uint64_t seq) override;
    void release_all() override;
    void discard_all() override;
    uint64_t held_bytes() const override;

    bool holding() const;

private:
    using Record = std::vector<std::byte>;
    struct Epoch {
        uint64_t seq;
        std::vector<Record> records;
    };
    void release(std::vector<Epoch>& epochs, std::unique_lock<std::mutex>& lock);

    std::string m_name;
    Framing m_framing;
    ReleaseFn m_release;
    uint64_t m_limit;
    std::function<void()> m_on_limit;

    mutable std::mutex m_mutex;
    // Serialises calls of m_release so output order is kept even though they run unlocked.
    std::mutex m_release_mutex;
    bool m_holding = false;
    std::deque<Epoch> m_sealed;
    std::vector<Record> m_open;
    std::atomic<uint64_t> m_held{0};  // written under m_mutex, read anywhere
    bool m_limit_signalled = false;
};

}  // namespace colod::core
