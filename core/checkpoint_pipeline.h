// SPDX-License-Identifier: GPL-2.0-or-later
// The active side's checkpoint, one stage after another:
//
//   capture (guest paused: dirty pages copied out, device state saved, the disk's writes taken,
//     the engine's bookkeeping) -> encode (the guest runs again) -> send (the session's sender:
//     the disk's writes, then the state) -> acks (VMSTATE_RECEIVED,
//     VMSTATE_LOADED) -> release (the engine's output for it goes out)
//
// and the live pre-copy that comes before a session's first checkpoint. The pipeline owns the
// dirty log, the capture buffer and the figures (pauses, pages, bytes); the engine owns the
// state machine and the outputs, and plugs into the pause and the release through Hooks.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "core/dirty_bitmap.h"
#include "core/machine.h"
#include "core/page_buffer.h"
#include "core/page_capture.h"
#include "core/pause_stats.h"
#include "core/session.h"
#include "proto/messages.h"
#include "proto/state.h"

namespace colod::core {

class CheckpointPipeline {
public:
    struct Hooks {
        // Inside the pause, after the device state is saved: what must see the guest stopped
        // (the input epoch, sealing the output). To keep the guest paused at this checkpoint the
        // engine moves the guard out.
        std::function<void(uint64_t seq, Machine::PauseGuard& paused)> paused;
        // The peer has loaded `seq`.
        std::function<void(uint64_t seq)> committed;
        // Inside the pause, around save_state: held while the device state is read, so input
        // into the devices and the epoch it is tagged with agree (the engine's input lock).
        std::function<std::unique_lock<std::mutex>()> lock_input;
        // Still under lock_input's lock, right after the device state was saved.
        std::function<void(uint64_t seq)> devices_saved;
        // Inside the pause: the guest disk's writes that this checkpoint carries (DISK_WRITES,
        // sent before its state).
        std::function<base::Result<std::vector<proto::DiskWrites>>(uint64_t seq)> disk_writes;
    };

    CheckpointPipeline(Machine& machine, std::chrono::microseconds interval,
                       std::chrono::milliseconds ack_timeout = std::chrono::seconds(30));

    // Starts a session's dirty log afresh: the copy that follows covers what came before.
    base::Result<void> restart_dirty_log();
    // Pre-copy: sends these pages of the running guest (in chunks, copied out before each is
    // sent) as PRECOPY states numbered by `next_seq`.
    base::Result<void> precopy(Session& session, std::span<const uint64_t> pages, std::atomic<uint64_t>& next_seq);
    // Harvests the dirty log into the pending set; returns how many pages are pending.
    base::Result<uint64_t> harvest();
    // The pending pages (for the next pre-copy round); clear_pending() drops them once sent.
    std::vector<uint64_t> pending_pages() const { return m_dirty.to_list(); }
    void clear_pending() { m_dirty.clear(); }
    // Room in the capture buffer before the first stop (outside any pause).
    void reserve(uint64_t bytes) { m_capture.reserve(bytes); }

    // One checkpoint through every stage. Returns once the peer loaded it (and `committed` ran).
    base::Result<void> run(Session& session, uint64_t seq, proto::StateKind kind, const Hooks& hooks);

    PauseStats::Summary pauses() const { return m_pauses.summary(); }
    PauseHistogram pause_histogram() const { return m_pauses.histogram(); }
    // Pages pre-copied since the dirty log was last restarted (this session's sync).
    uint64_t precopy_pages() const { return m_precopy_pages.load(); }
    uint64_t checkpoints() const { return m_checkpoints.load(); }
    uint64_t dirty_last() const { return m_dirty_last.load(); }
    uint64_t dirty_total() const { return m_dirty_total.load(); }
    uint64_t bytes_sent() const { return m_bytes_sent.load(); }

private:
    Machine& m_machine;
    std::chrono::microseconds m_interval;
    std::chrono::milliseconds m_ack_timeout;
    PageCapture m_capture;
    PageBuffer m_precopy_copy;  // pre-copy pages, copied out of the running guest (8 MiB)
    DirtyBitmap m_dirty;
    PauseStats m_pauses;
    std::atomic<uint64_t> m_checkpoints{0};
    std::atomic<uint64_t> m_dirty_last{0};
    std::atomic<uint64_t> m_dirty_total{0};
    std::atomic<uint64_t> m_bytes_sent{0};
    std::atomic<uint64_t> m_precopy_pages{0};
    std::chrono::steady_clock::time_point m_last_slow_log{};
};

}  // namespace colod::core
