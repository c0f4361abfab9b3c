// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>

#include "core/pause_stats.h"

namespace colod::core {

// COLO mode's held output. The primary's console bytes are held per epoch (the run after a
// checkpoint) and released as soon as the secondary's guest has written the same bytes in the
// same epoch: both guests, fed the same input, said the same thing, so either may carry on. When
// the two differ, or the secondary falls too far behind, the owner takes a checkpoint; the
// primary's held bytes then go out once that checkpoint is committed (the secondary has the
// state that produced them). A checkpoint's capture seals the open epoch; the secondary's
// later bytes for the sealed epoch are dropped (its run is replaced by the checkpoint).
class OutputComparator {
public:
    using ReleaseFn = std::function<void(std::span<const std::byte>)>;
    enum class Verdict { Fine, Mismatch, Behind };

    // `on_verdict` is called (unlocked) when a checkpoint is needed: the outputs differ, or the
    // oldest unmatched primary byte waited longer than `max_lag`, or more than `max_held` bytes
    // are held.
    OutputComparator(ReleaseFn release, std::chrono::microseconds max_lag, uint64_t max_held,
                     std::function<void(Verdict)> on_verdict);

    // The primary guest's output (vCPU threads).
    void primary(std::span<const std::byte> bytes);
    // The secondary guest's output, tagged with the epoch it ran in.
    void secondary(uint64_t epoch, std::string_view bytes);
    // Checks the lag bound (called periodically by the owner).
    void check_lag();
    // The machine is paused at checkpoint `seq`: the open epoch is sealed as `seq`; output from
    // now on belongs to epoch `seq` (the run after it).
    void captured(uint64_t seq);
    // Checkpoint `seq` is applied on the secondary: release every sealed epoch <= seq.
    void committed(uint64_t seq);
    // No secondary: everything held goes out; pass-through from now on.
    void release_all();
    // Starts comparing (protected) with the open epoch `epoch`.
    void start(uint64_t epoch);

    uint64_t held_bytes() const;
    // Time from a primary byte to its match, in microseconds.
    PauseStats::Summary compare_latency() const { return m_latency.summary(); }

private:
    struct Sealed {
        uint64_t seq;
        std::string bytes;
    };
    void try_match(std::string& out, Verdict& verdict);  // caller holds m_mutex

    ReleaseFn m_release;
    std::chrono::microseconds m_max_lag;
    uint64_t m_max_held;
    std::function<void(Verdict)> m_on_verdict;

    mutable std::mutex m_mutex;
    std::mutex m_release_mutex;  // keeps released bytes in order
    bool m_comparing = false;
    uint64_t m_epoch = 0;          // the open epoch
    std::string m_open;            // primary bytes of the open epoch not yet released
    // Arrival of m_open's bytes, as (end offset in m_open, time) per appended chunk.
    std::deque<std::pair<size_t, std::chrono::steady_clock::time_point>> m_open_times;
    std::string m_secondary;       // secondary bytes of the open epoch not yet matched
    bool m_diverged = false;       // the open epoch mismatched: hold until a checkpoint
    bool m_verdict_pending = false;
    std::deque<Sealed> m_sealed;
    std::atomic<uint64_t> m_held{0};  // written under m_mutex, read anywhere
    PauseStats m_latency;
};

}  // namespace colod::core
