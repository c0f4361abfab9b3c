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
#include <vector>

#include "core/output_channel.h"
#include "core/pause_stats.h"

namespace colod::core {

// COLO mode's output channel. The primary's records are held per epoch (the run after a
// checkpoint) and released as soon as the secondary's guest has produced the same output in the
// same epoch: both guests, fed the same input, said the same thing, so either may carry on. A
// Stream channel compares bytes (record boundaries differ between the guests); a Datagram
// channel compares record by record, in order. When the two differ, or the secondary falls too
// far behind, the owner takes a checkpoint; the primary's held records then go out once that
// checkpoint is committed (the secondary has the state that produced them). A checkpoint's
// capture seals the open epoch; the secondary's later records for the sealed epoch are dropped
// (its run is replaced by the checkpoint). Released output keeps the primary's order: what
// matches in an epoch waits behind what earlier checkpoints sealed and have not committed.
class OutputComparator final : public OutputChannel {
public:
    enum class Verdict { Fine, Mismatch, Behind };

    // `on_verdict` is called (unlocked) when a checkpoint is needed: the outputs differ, or the
    // oldest unmatched primary byte waited longer than `max_lag`, or more than `max_held` bytes
    // are held.
    OutputComparator(std::string name, Framing framing, ReleaseFn release, std::chrono::microseconds max_lag,
                     uint64_t max_held, std::function<void(Verdict)> on_verdict);

    std::string_view name() const override { return m_name; }
    // The primary guest's output (device threads).
    void put(std::span<const std::byte> record) override;
    // The secondary guest's output, tagged with the epoch it ran in.
    void secondary(uint64_t epoch, std::span<const std::byte> record) override;
    // Checks the lag bound (called periodically by the owner).
    void check_lag() override;
    // Starts comparing (protected) with the open epoch `epoch`.
    void protect(uint64_t epoch) override;
    // The machine is paused at checkpoint `seq`: the open epoch is sealed as `seq`; output from
    // now on belongs to epoch `seq` (the run after it).
    void captured(uint64_t seq) override;
    // Checkpoint `seq` is applied on the secondary: release every sealed epoch <= seq.
    void committed(uint64_t seq) override;
    // No secondary: everything held goes out; pass-through from now on.
    void release_all() override;
    void discard_all() override;

    uint64_t held_bytes() const override;
    // Time from a primary byte to its match, in microseconds.
    PauseStats::Summary compare_latency() const override { return m_latency.summary(); }

private:
    using Clock = std::chrono::steady_clock;
    // Held output in release order: an epoch's records sealed by checkpoint `seq` (out once it
    // commits), or matched records (seq k_matched: out as soon as everything before them is).
    struct Sealed {
        uint64_t seq;
        std::vector<std::string> records;
    };
    static constexpr uint64_t k_matched = 0;
    struct Record {
        std::string bytes;
        Clock::time_point at;
    };
    // Caller holds m_mutex; matched primary output goes to `out`, record by record.
    void try_match(std::vector<std::string>& out, Verdict& verdict);
    void match_stream(std::vector<std::string>& out);
    void match_datagrams(std::vector<std::string>& out);
    void diverged(Verdict& verdict);
    // Under m_mutex: matched output in `out` goes behind held sealed epochs, if any (then `out`
    // is left empty).
    void queue_behind_sealed(std::vector<std::string>& out);
    void release(std::vector<std::string>& out);  // under m_release_mutex
    // Under m_mutex: the open epoch's records, taken out; a fresh open epoch; nothing held.
    std::vector<std::string> take_open();
    void reset_epoch(uint64_t epoch);
    void stop_comparing();

    std::string m_name;
    Framing m_framing;
    ReleaseFn m_release;
    std::chrono::microseconds m_max_lag;
    uint64_t m_max_held;
    std::function<void(Verdict)> m_on_verdict;

    mutable std::mutex m_mutex;
    std::mutex m_release_mutex;  // keeps released records in order
    bool m_comparing = false;
    uint64_t m_epoch = 0;        // the open epoch
    // Primary records of the open epoch not yet released (Stream: one per put, matched by
    // bytes across their boundaries; Datagram: matched whole).
    std::deque<Record> m_open;
    size_t m_open_offset = 0;    // Stream: bytes of m_open.front() already released
    // Secondary output of the open epoch not yet matched (Stream: bytes in the first record).
    std::deque<std::string> m_secondary;
    bool m_diverged = false;     // the open epoch mismatched: hold until a checkpoint
    bool m_verdict_pending = false;
    std::deque<Sealed> m_sealed;
    std::atomic<uint64_t> m_held{0};  // written under m_mutex, read anywhere
    PauseStats m_latency;
};

}  // namespace colod::core
