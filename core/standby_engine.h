// SPDX-License-Identifier: GPL-2.0-or-later
// The standby side of a pair (colod-secondary): listens on its replication endpoint, receives
// the primary's live copy and checkpoints, applies each complete checkpoint atomically to its
// paused machine, and takes over when the primary is lost.
//
// Its states and transitions are the table k_standby_transitions (in the .cc, and in
// docs/engines.md); any other move is refused and logged:
//
//   listening --primary connected--> syncing --first complete checkpoint--> standby
//       ^                              |  ^                                   |
//       +--lost, nothing committed-----+  +-----primary reconnected-----------+
//   syncing/standby --primary lost (fenced), handover, coloctl failover--> active
//
// Only a complete, checksummed, in-sequence checkpoint is applied: its pages are staged while
// frames arrive and copied into guest RAM (with the device state loaded) only after END
// validated. A link failure mid-transfer discards the staging buffer; the committed state stays.
//
// Threads: the accept thread; one session thread per connected primary, which reads frames and
// hands each message kind to its handler; the session's sender (every reply is queued, never
// sent under a state mutex); vCPU threads in COLO mode (their output is queued too).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"
#include "core/dirty_bitmap.h"
#include "core/disk/overlay.h"
#include "core/disk_replication.h"
#include "core/machine.h"
#include "core/page_buffer.h"
#include "core/replication.h"
#include "core/session.h"
#include "core/state_machine.h"
#include "core/status.h"
#include "proto/link.h"
#include "proto/state.h"

namespace colod::core {

class GuestRuntime;
namespace virtio {
class StreamEntropy;
}
namespace net {
class TcpRewriter;
}

class StandbyEngine {
public:
    enum class State {
        Listening,  // no primary, nothing committed here
        Syncing,    // a primary is copying the guest here
        Standby,    // a committed checkpoint is held: this side can take over
        Active,     // this side took over: the guest runs here
        Stopped,    // stop(), or the primary's guest powered off
    };
    static std::string_view state_name(State state);
    static std::span<const Transition<State>> transitions();

    struct Callbacks {
        // Makes the guest run here: open the console, start the vCPUs, protect it. Called on the
        // engine's thread once; returns false if the guest could not be started.
        std::function<bool()> take_over;
        // The primary's guest powered off: the daemon exits cleanly, without a takeover.
        std::function<void(int exit_code)> guest_shutdown;
        // A one-line state description for sd_notify STATUS=.
        std::function<void(const std::string&)> changed;
    };

    StandbyEngine(GuestRuntime& guest, proto::Hello identity, ReplicationConfig config, proto::Listener listener,
                  Callbacks callbacks);
    ~StandbyEngine();
    StandbyEngine(const StandbyEngine&) = delete;
    StandbyEngine& operator=(const StandbyEngine&) = delete;

    // The guest's disk ([vm] disk), before start(): its copy, each checkpoint's writes and the
    // journal that moves the image with the memory (core/disk_replication.h).
    void set_disk(std::unique_ptr<DiskReplica> disk);
    void start();
    void stop();

    // Operator-ordered takeover (coloctl failover) from the last committed checkpoint, when no
    // primary is connected. The operator confirms that the primary is down (as with a fence
    // agent's manual confirmation), so the fence command is not run: this is the way past a
    // fence that keeps failing.
    base::Result<uint64_t> failover_now();

    // Diagnostics: the committed checkpoint, the digest of guest RAM holding it, and with a
    // disk the digest of the image at it (nullopt: none; an error: the image unreadable).
    struct Digest {
        uint64_t seq = 0;
        uint64_t memory = 0;
        std::optional<base::Result<uint64_t>> disk;
    };
    Digest digest();

    State state() const;
    uint64_t committed() const { return m_committed.load(); }
    void fill_status(Status& status) const;
    // The takeovers this engine made, and how long the last one took from the decision until
    // the guest ran here (fill_status has them too; after a takeover the daemon's status comes
    // from its active engine, and these from here).
    struct Failovers {
        uint64_t count = 0;
        uint64_t last_us = 0;
    };
    Failovers failovers() const { return {m_failovers.load(), m_last_failover_us.load()}; }
    // Tests: sees every transition the engine takes.
    void observe_transitions(std::function<void(State, State)> observer);

private:
    struct Staging;
    struct Context;  // one session's decoding state
    // How a session ends, as its handlers decide.
    struct End {
        enum class Kind { Lost, Refused, Shutdown, Handover } kind;
        std::string why;
        int exit_code = 0;
    };
    using Step = std::optional<End>;  // empty: the session goes on

    void accept_loop();
    void refuse(proto::Link link, const std::string& why);
    void run_session(std::shared_ptr<Session> session);
    End receive_loop(Context& context);
    void session_ended(const End& end, const std::string& peer, std::chrono::steady_clock::time_point detected);
    // One handler per message kind.
    Step on_state(Context& context, std::span<const std::byte> payload);
    Step on_size(Context& context, const proto::VmstateSize& size);
    Step on_checkpoint_request(Context& context, const proto::CheckpointRequest& request);
    Step on_console_input(Context& context, proto::ConsoleInput& input);
    Step on_rng_input(Context& context, const proto::RngInput& input);
    Step on_net_input(Context& context, proto::NetInput& frame);
    Step on_disk_blocks(Context& context, const proto::DiskBlocks& blocks);
    Step on_disk_writes(Context& context, proto::DiskWrites& writes);
    Step on_handover(Context& context, const proto::Handover& handover);
    Step on_guest_shutdown(Context& context, const proto::GuestShutdown& shutdown);
    Step on_peer_error(Context& context, const proto::ErrorMessage& error);
    // Bytes from a live sender that this side will not apply: tell it why; never a takeover.
    End refused(Context& context, const base::Error& error);
    base::Result<void> receive_state(Context& context, std::span<const std::byte> payload);
    base::Result<void> apply(Staging& staging, uint64_t seq);
    // The primary is gone (why): fence and take over if a committed checkpoint exists.
    void primary_lost(const std::string& why, std::chrono::steady_clock::time_point detected);
    enum class Fencing { Run, Skip };
    bool take_over(const std::string& why, std::chrono::steady_clock::time_point detected, Fencing fencing);
    bool take_over_locked(const std::string& why, std::chrono::steady_clock::time_point detected, Fencing fencing);
    bool move(State state, const std::string& why);  // under m_mutex
    void set_state(State state, const std::string& why);
    bool colo() const { return m_config.mode == ReplicationMode::Colo; }
    // COLO: the guest runs here between checkpoints, fed the primary's input.
    void start_colo_guest(uint64_t seq);
    // COLO: true when the replica here has stopped by itself (a crash, a halt), not because the
    // daemon stopped it. The guest's RAM and state are then those of a run that went wrong.
    bool replica_stopped_by_itself() const;
    // Puts a replica that stopped by itself back to the last checkpoint (its own writes undone
    // from the cache, the machine state reloaded). Under m_takeover_mutex.
    base::Result<void> roll_back_replica();
    // Loads checkpoint `seq`'s machine state; the virtio-rng's stream follows the loaded device.
    base::Result<void> load_machine_state(const MachineState& state, uint64_t seq);
    void feed_input();
    void send_output(std::span<const std::byte> bytes);
    // COLO with a NIC: the primary's frames of the running epoch go to the guest here; the
    // guest's frames go to the primary's comparator.
    void feed_frames();
    void send_frame(std::span<const std::byte> frame);

    GuestRuntime& m_guest;
    proto::Hello m_identity;
    ReplicationConfig m_config;
    proto::Listener m_listener;
    Callbacks m_callbacks;

    mutable std::mutex m_mutex;
    std::condition_variable m_cv;
    StateMachine<State> m_machine;  // guarded by m_mutex
    std::string m_peer;                 // the connected primary, if any
    std::string m_peer_state = "none";
    bool m_stop = false;
    bool m_session_active = false;
    std::shared_ptr<Session> m_session;  // guarded by m_mutex: the live session
    // Guest RAM and devices hold checkpoint m_committed. Written under m_takeover_mutex (by the
    // session thread), read there by any other thread: a takeover decides on it under that lock.
    bool m_committed_valid = false;
    std::atomic<uint64_t> m_committed{0};
    std::atomic<uint64_t> m_checkpoints{0};
    std::atomic<uint64_t> m_dirty_last{0};
    std::atomic<uint64_t> m_dirty_total{0};
    std::atomic<uint64_t> m_bytes_received{0};
    std::atomic<uint64_t> m_sync_pages{0};  // pages the live copy wrote since the primary connected
    std::atomic<uint64_t> m_failovers{0};
    std::atomic<uint64_t> m_last_failover_us{0};
    // One takeover, from whichever thread decides it; also held while a session is claimed and
    // while a copy or a checkpoint writes the guest's RAM. Taken before m_mutex.
    std::mutex m_takeover_mutex;

    // COLO mode.
    PageBuffer m_cache;                  // guest RAM as of the last checkpoint
    bool m_cache_ready = false;
    std::optional<Machine::PauseGuard> m_colo_pause;  // the guest stopped for a checkpoint
    // The machine state of the last checkpoint loaded: a replica that stopped by itself is put
    // back to it (with the cache) before a takeover runs it.
    std::optional<MachineState> m_colo_state;
    std::atomic<uint64_t> m_epoch{0};    // the checkpoint the guest here runs after
    std::mutex m_input_mutex;
    std::deque<proto::ConsoleInput> m_input;  // forwarded input not yet in the UART
    size_t m_input_offset = 0;           // bytes of m_input.front() already in the UART
    // The primary's virtio-rng bytes (RNG_INPUT), which the device here gives its guest; the
    // host's entropy once this side takes over. Null without a virtio-rng or outside COLO.
    std::shared_ptr<virtio::StreamEntropy> m_rng_stream;
    // The primary's frames (NET_INPUT) not yet given to the guest here: the epochs ahead of the
    // running one. Bounded: past the bounds a frame is dropped (the comparison then asks for a
    // checkpoint).
    static constexpr size_t k_net_input_frames = 4096;
    static constexpr size_t k_net_input_bytes = 16u << 20;
    std::mutex m_net_mutex;
    std::deque<proto::NetInput> m_net_input;  // guarded by m_net_mutex
    size_t m_net_input_bytes = 0;             // guarded by m_net_mutex
    std::atomic<uint64_t> m_net_input_dropped{0};  // frames past the bounds, for status
    // COLO with a NIC: the TCP sequence rewriter between the guest here and everything else.
    std::shared_ptr<net::TcpRewriter> m_rewriter;
    std::atomic<bool> m_taking_over{false};  // a takeover is under way (fencing, starting the guest)
    std::unique_ptr<DiskReplica> m_disk;  // null without a disk; used by the session thread and takeover
    // COLO: the guest's own writes between two checkpoints, in front of the image (null otherwise).
    std::shared_ptr<disk::Overlay> m_overlay;
    // COLO: the guest's disk requests wait while its overlay holds this much (its output then
    // lags the primary's, whose comparison asks for the checkpoint that empties it).
    static constexpr uint64_t k_overlay_bytes = 256u << 20;
    std::thread m_accept_thread;
    std::thread m_session_thread;
};

}  // namespace colod::core
