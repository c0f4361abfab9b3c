// SPDX-License-Identifier: GPL-2.0-or-later
// The active side of a pair: the daemon whose guest runs (colod-primary, or a colod-secondary
// after it took over). It connects to the peer's replication endpoint, syncs a standby there
// with a live pre-copy, then checkpoints the guest at every interval, holding console output
// until the standby has applied the state that produced it.
//
//   unprotected --connect+handshake--> syncing --first checkpoint applied--> protected
//        ^                                 |                                     |
//        +--------- peer lost (EOF, timeout, protocol error): release output ----+
//
// Threads: the replication thread drives the state machine above and sends; a receiver thread
// reads the return path (acks, heartbeats) and declares the peer lost when it hears nothing for
// heartbeat-timeout; proto's HeartbeatSender keeps our side audible.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "base/result.h"
#include "core/dirty_bitmap.h"
#include "core/machine.h"
#include "core/output_buffer.h"
#include "core/output_comparator.h"
#include "core/page_buffer.h"
#include "core/page_capture.h"
#include "core/pause_stats.h"
#include "core/replication.h"
#include "core/status.h"
#include "proto/link.h"

namespace colod::core {

class GuestRuntime;

class ActiveEngine {
public:
    enum class State { Unprotected, Syncing, Protected, Stopped };

    // `local_state`: PrimaryActive for colod-primary, SecondaryActive after a takeover.
    // `on_change` is called (from the replication thread) with a one-line description whenever
    // the protection state changes, for sd_notify STATUS=.
    ActiveEngine(GuestRuntime& guest, proto::Hello identity, ReplicationConfig config, proto::PeerState local_state,
                 std::function<void(const std::string&)> on_change = {});
    ~ActiveEngine();
    ActiveEngine(const ActiveEngine&) = delete;
    ActiveEngine& operator=(const ActiveEngine&) = delete;

    // Before the guest starts: one attempt to reach the peer. Connected keeps the link for the
    // sync; PeerActive means the peer already runs the guest (the caller must not start its own).
    enum class Probe { Connected, PeerActive, Unreachable };
    struct ProbeResult {
        Probe outcome;
        std::string detail;
    };
    ProbeResult probe();

    // Continues the checkpoint numbering of an earlier pair (after a takeover from `seq`).
    void continue_from(uint64_t seq) {
        m_committed = seq;
        m_next_seq = seq + 1;
    }

    // Routes guest output through the held-output buffer and starts the replication thread.
    void start();
    // What happens to output still held when replication stops. Release it only when the peer
    // will not take over (it was told the guest shut down); otherwise drop it: the peer resumes
    // from its last checkpoint and produces that output again.
    enum class HeldOutput { Release, Discard };
    // Stops replication and closes the link. The guest keeps running.
    void stop(HeldOutput held = HeldOutput::Discard);

    // Takes a checkpoint now and waits until the peer has applied it (coloctl checkpoint).
    base::Result<uint64_t> checkpoint_now(std::chrono::milliseconds timeout);
    // Diagnostics: takes a checkpoint and leaves the guest paused at it, so both sides' memory
    // can be compared; returns the checkpoint and the digest of guest RAM at it. release_hold()
    // (or a lost peer, or stop) lets the guest run on.
    base::Result<std::pair<uint64_t, uint64_t>> checkpoint_and_hold(std::chrono::milliseconds timeout);
    void release_hold();
    // Planned switchover (coloctl failover): stops the guest at a final checkpoint, hands it
    // to the peer (HANDOVER) and waits until the peer runs it. Nothing is lost: every output is
    // in that checkpoint and has been released. Afterwards the guest must never run here again:
    // the caller stops the machine.
    base::Result<uint64_t> handover(std::chrono::milliseconds timeout);
    bool handed_over() const;
    // The guest powered off: tells the peer (GUEST_SHUTDOWN) so it stops too, then stops.
    void guest_shutdown(int exit_code);

    State state() const;
    void fill_status(Status& status) const;

private:
    struct Session;

    void run();
    base::Result<void> run_session(proto::Link link);
    base::Result<proto::Link> connect(proto::PeerState* peer_state);
    base::Result<void> sync(Session& session);
    base::Result<void> checkpoint(Session& session, uint64_t seq, proto::StateKind kind);
    base::Result<void> send_live_pages(Session& session, std::span<const uint64_t> pages);
    void receive_loop(Session& session);
    // Waits for a message of type T for `seq` from the receiver thread.
    template <typename T>
    base::Result<void> await(Session& session, uint64_t seq, std::chrono::steady_clock::time_point deadline);
    void set_state(State state, const std::string& why);
    bool wait_until(std::chrono::steady_clock::time_point when);  // false: stop requested or session failed
    void force_checkpoint();
    bool colo() const { return m_config.mode == ReplicationMode::Colo; }
    // COLO: console input goes into the UART and, in the same order, to the peer.
    size_t forward_input(std::span<const std::byte> bytes);
    // Output held for the peer: the comparator in COLO mode, the epoch buffer otherwise.
    void output_captured(uint64_t seq);
    void output_committed(uint64_t seq);
    void output_release_all();
    void output_discard_all();

    GuestRuntime& m_guest;
    proto::Hello m_identity;
    ReplicationConfig m_config;
    proto::PeerState m_local_state;
    std::function<void(const std::string&)> m_on_change;
    OutputBuffer m_output;
    OutputComparator m_comparator;  // COLO mode
    std::atomic<uint64_t> m_checkpoints_mismatch{0};
    std::atomic<uint64_t> m_checkpoints_forced{0};
    bool m_verdict = false;             // guarded by m_mutex: the comparator asked for a checkpoint
    bool m_force_pending = false;       // guarded by m_mutex: someone forced a checkpoint
    std::mutex m_input_mutex;           // input into the UART and its forwarding, in one order
    proto::Link* m_forward_link = nullptr;  // guarded by m_input_mutex
    uint64_t m_input_epoch = 0;             // guarded by m_input_mutex
    bool m_forwarding = false;              // guarded by m_input_mutex
    PauseStats m_pauses;
    PageCapture m_capture;
    PageBuffer m_precopy_copy;  // pre-copy pages, copied out of the running guest (8 MiB)
    DirtyBitmap m_dirty;

    mutable std::mutex m_mutex;
    std::condition_variable m_cv;
    State m_state = State::Unprotected;
    std::string m_peer_state = "none";
    bool m_stop = false;
    bool m_force = false;
    bool m_ever_protected = false;
    std::optional<proto::Link> m_probed;  // a link probe() made, for the first session
    Session* m_session = nullptr;         // the live session, guarded by m_mutex
    std::atomic<uint64_t> m_next_seq{1};  // the next checkpoint's number (replication thread)
    uint64_t m_commit_waiters_seq = 0;
    std::atomic<uint64_t> m_committed{0};
    std::atomic<uint64_t> m_checkpoints{0};
    std::atomic<uint64_t> m_dirty_last{0};
    std::atomic<uint64_t> m_dirty_total{0};
    std::atomic<uint64_t> m_bytes_sent{0};
    std::chrono::steady_clock::time_point m_last_slow_log{};
    std::string m_pause_breakdown;  // where the last pause went (for checkpoint-slow)
    bool m_hold_requested = false;               // guarded by m_mutex
    bool m_handover_requested = false;           // guarded by m_mutex
    uint64_t m_handover_seq = 0;                 // the checkpoint the guest stopped at
    bool m_handed_over = false;                  // the peer runs the guest now
    std::optional<Machine::PauseGuard> m_hold;   // the guest paused at a checkpoint (diagnostics)
    uint64_t m_hold_seq = 0, m_hold_digest = 0;
    std::thread m_thread;
};

}  // namespace colod::core
