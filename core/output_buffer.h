// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

namespace colod::core {

// Guest output held until the secondary has the state that produced it.
//
// Bytes arrive from vCPU threads and belong to the open epoch. When a checkpoint is captured
// (machine paused), seal(k) closes the open epoch as checkpoint k: everything held so far was
// produced by a state no newer than checkpoint k. release(k), on VMSTATE_LOADED(k), hands every
// sealed epoch <= k to the release function, in order. release_all() is for the unprotected case
// (no secondary): everything goes out at once, and while unprotected new bytes go straight out.
class OutputBuffer {
public:
    using ReleaseFn = std::function<void(std::span<const std::byte>)>;

    // `limit`: when the held bytes reach it, `on_limit` is called (from the vCPU thread that
    // crossed it) so the engine can force a checkpoint.
    OutputBuffer(ReleaseFn release, uint64_t limit, std::function<void()> on_limit);

    // Guest output (vCPU threads).
    void append(std::span<const std::byte> bytes);
    // Closes the open epoch as checkpoint `seq`. The machine must be paused.
    void seal(uint64_t seq);
    // Releases every sealed epoch <= seq.
    void release(uint64_t seq);
    // Releases everything, sealed or not, and switches to pass-through (unprotected).
    void release_all();
    // Drops everything held (the daemon is going away and its peer will produce this output
    // again from its last checkpoint).
    void discard_all();
    // Starts holding again (protected). Bytes from now on wait for a checkpoint.
    void hold();

    uint64_t held_bytes() const;
    bool holding() const;

private:
    struct Epoch {
        uint64_t seq;
        std::vector<std::byte> bytes;
    };

    ReleaseFn m_release;
    uint64_t m_limit;
    std::function<void()> m_on_limit;

    mutable std::mutex m_mutex;
    // Serialises calls of m_release so output order is kept even though they run unlocked.
    std::mutex m_release_mutex;
    bool m_holding = false;
    std::deque<Epoch> m_sealed;
    std::vector<std::byte> m_open;
    std::atomic<uint64_t> m_held{0};  // written under m_mutex, read anywhere
    bool m_limit_signalled = false;
};

}  // namespace colod::core
