// SPDX-License-Identifier: GPL-2.0-or-later
// The active side of a pair: the daemon whose guest runs (colod-primary, or a colod-secondary
// after it took over). It connects to the peer's replication endpoint, syncs a standby there
// with a live pre-copy, then checkpoints the guest at every interval, holding console output
// until the standby has applied the state that produced it.
//
// Its states and the transitions between them are the table k_active_transitions (below, and
// in docs/engines.md); any other move is refused and logged.
//
// Threads: the replication thread drives the state machine and the checkpoint pipeline; the
// session's threads send (one queue) and receive (acks, heartbeats, the secondary's output);
// control calls (checkpoint_now, handover, hold) come from the control socket's thread. No
// thread does socket I/O while it holds a state mutex: a vCPU thread, a device's doorbell
// thread, the console's input or a paused checkpoint only queue messages on the session.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "core/checkpoint_pipeline.h"
#include "core/disk_replication.h"
#include "core/machine.h"
#include "core/output_channel.h"
#include "core/output_comparator.h"
#include "core/replication.h"
#include "core/session.h"
#include "core/state_machine.h"
#include "core/status.h"
#include "proto/link.h"

namespace colod::core {

class GuestNetwork;
class GuestRuntime;
namespace net {
struct VnetHeader;
}

class ActiveEngine {
public:
    enum class State {
        Unprotected,  // no standby: output flows straight out (or nothing ever connected)
        Syncing,      // a standby accepted us: live pre-copy, then the first checkpoint
        Protected,    // checkpoints commit on the standby at every interval
        Held,         // paused at a committed checkpoint for diagnostics (coloctl digest)
        HandingOver,  // paused for good at the final checkpoint; the standby is told to take it
        HandedOver,   // the standby runs the guest: it must never run here again
        Stopped,      // stop() was called
    };
    static std::string_view state_name(State state);
    static std::span<const Transition<State>> transitions();

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
    // Tests: how the engine reaches its peer, instead of TCP to peer-address (the handshake
    // follows as usual). Before probe() and start().
    void set_dialer(std::function<base::Result<proto::Link>()> dial) { m_dial = std::move(dial); }

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
    // Tests: sees every transition the engine takes.
    void observe_transitions(std::function<void(State, State)> observer);

private:
    void run();
    base::Result<void> run_session(proto::Link link);
    base::Result<void> protect(Session& session);
    base::Result<proto::Link> connect(proto::PeerState* peer_state);
    base::Result<void> sync(Session& session);
    base::Result<void> checkpoint(Session& session, uint64_t seq, proto::StateKind kind);
    base::Result<Session::Disposition> on_message(proto::Message& message);
    bool move(State state, const std::string& why);  // under m_mutex
    void changed(const std::string& why);           // not under m_mutex
    bool wait_until(Session& session, std::chrono::steady_clock::time_point when);  // false: stopped or failed
    void force_checkpoint();
    bool colo() const { return m_config.mode == ReplicationMode::Colo; }
    // COLO: console input goes into the UART and, in the same order, to the peer.
    size_t forward_input(std::span<const std::byte> bytes);
    // COLO: the virtio-rng's bytes (a Linux guest's) go to the peer too (RNG_INPUT); between
    // two checkpoints the guest takes at most k_rng_epoch_limit of them, so that the
    // secondary, which holds every byte since its last checkpoint, holds a bounded amount.
    static constexpr uint64_t k_rng_epoch_limit = 1 << 20;
    void forward_rng(uint64_t offset, std::span<const std::byte> bytes);
    // COLO: a frame from the tap goes to the guest here and, tagged with the epoch, to the peer
    // (with its virtio-net header, both ways).
    void forward_frame(GuestNetwork& network, const net::VnetHeader& header, std::span<const std::byte> frame);
    // COLO: a comparator asks for a checkpoint.
    void compare_verdict(OutputComparator::Verdict verdict);
    uint64_t rng_allowance() const;
    void rng_session(std::shared_ptr<Session> session);
    // Every output channel through the checkpoint's lifecycle (core/output_channel.h).
    void output_captured(uint64_t seq);
    void output_committed(uint64_t seq);
    void output_release_all();
    void output_discard_all();
    uint64_t held_output_bytes() const;

    GuestRuntime& m_guest;
    proto::Hello m_identity;
    ReplicationConfig m_config;
    proto::PeerState m_local_state;
    std::function<void(const std::string&)> m_on_change;
    // Output held for the peer, per channel: comparators in COLO mode, epoch buffers otherwise.
    std::unique_ptr<OutputChannel> m_console;
    std::unique_ptr<OutputChannel> m_net;  // the guest's packets, with a NIC on a tap (net::PacketComparator in COLO)
    std::vector<OutputChannel*> m_channels;  // every channel, the console first
    std::atomic<uint64_t> m_checkpoints_mismatch{0};
    std::atomic<uint64_t> m_checkpoints_forced{0};  // Status::checkpoints_forced
    bool m_verdict = false;             // guarded by m_mutex: the comparator asked for a checkpoint
    bool m_force_pending = false;       // guarded by m_mutex: someone forced a checkpoint
    // Input into the UART and its forwarding, in one order. Held only to push into the UART and
    // queue on the session: never across socket I/O.
    std::mutex m_input_mutex;
    std::shared_ptr<Session> m_input_session;  // guarded by m_input_mutex: the live session
    uint64_t m_input_epoch = 0;                // guarded by m_input_mutex
    bool m_forwarding = false;                 // guarded by m_input_mutex
    std::mutex m_rng_mutex;                    // taken under the rng transport's lock, never around it
    std::shared_ptr<Session> m_rng_session;    // guarded by m_rng_mutex: COLO's live session
    std::atomic<uint64_t> m_rng_taken{0};      // the device's stream position (its observer)
    std::atomic<uint64_t> m_rng_saved{0};      // ... when the last checkpoint saved the devices
    std::atomic<bool> m_rng_limited{false};    // a COLO session runs checkpoints
    // The guest's disk ([vm] disk): its live copy and each epoch's writes (null without one).
    std::unique_ptr<DiskSource> m_disk;
    // An epoch's disk writes past this force a checkpoint.
    static constexpr uint64_t k_disk_epoch_bytes = 64u << 20;
    CheckpointPipeline m_pipeline;

    mutable std::mutex m_mutex;
    std::condition_variable m_cv;
    StateMachine<State> m_machine;        // guarded by m_mutex
    std::string m_peer_state = "none";
    bool m_stop = false;
    bool m_force = false;
    bool m_ever_protected = false;
    std::optional<proto::Link> m_probed;     // a link probe() made, for the first session
    std::shared_ptr<Session> m_session;      // the live session, guarded by m_mutex
    std::atomic<uint64_t> m_next_seq{1};     // the next checkpoint's number (replication thread)
    std::atomic<uint64_t> m_committed{0};
    bool m_hold_requested = false;               // guarded by m_mutex
    bool m_handover_requested = false;           // guarded by m_mutex
    uint64_t m_handover_seq = 0;                 // guarded by m_mutex: the checkpoint handed over
    bool m_handed_over = false;                  // guarded by m_mutex: HandedOver was reached
    std::optional<Machine::PauseGuard> m_hold;   // guarded by m_mutex: Held and HandingOver's pause
    uint64_t m_hold_seq = 0;                     // guarded by m_mutex
    std::function<base::Result<proto::Link>()> m_dial;
    std::thread m_thread;
};

}  // namespace colod::core
