// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstdint>
#include <string>

#include "core/pause_stats.h"

namespace colod::core {

// A point-in-time view of one daemon, as `coloctl status` shows it. The JSON keys are part of
// the interface (DESIGN.md); fields are never removed, only added.
struct Status {
    std::string vm;
    std::string role;        // primary | secondary
    std::string mode;        // checkpoint | colo
    std::string state;       // syncing | protected | unprotected | standby | active | stopped
    std::string backend;     // kvm | soft
    uint64_t seq = 0;        // last committed checkpoint
    uint64_t checkpoints = 0;
    struct {
        uint64_t last = 0, p50 = 0, p99 = 0, max = 0;
    } pause_us;
    struct {
        uint64_t last = 0, total = 0;
    } dirty_pages;
    uint64_t bytes_sent = 0;
    uint64_t held_output_bytes = 0;
    std::string peer;        // host:port of the peer's replication endpoint
    std::string peer_state;  // connected | lost | none
    uint64_t uptime_ms = 0;
    uint64_t console_clients = 0;
    // COLO mode: checkpoints caused by an output mismatch, the others (interval bound, a lagging
    // secondary, coloctl), and the time from a primary output byte to its match.
    uint64_t checkpoints_mismatch = 0;
    uint64_t checkpoints_interval = 0;
    uint64_t compare_us_p50 = 0;
    uint64_t compare_us_p99 = 0;
    std::string guest;       // running | stopped reason
    // Checkpoints taken before the interval was due: coloctl checkpoint, held output over
    // max-held-output, a hold or a handover, a lagging COLO secondary, the end of a live sync
    // (any mode; checkpoints_mismatch counts the COLO mismatches apart).
    uint64_t checkpoints_forced = 0;
    // The standby: the checkpoints it applied (the same as checkpoints, which on the active side
    // counts those it took); 0 on the active side.
    uint64_t checkpoints_applied = 0;
    PauseHistogram pause_histogram;  // every checkpoint pause of the active side
    // The live copy: 0 with nothing copied, the share of guest RAM the copy has carried while
    // syncing (below 1), 1 once a committed checkpoint is held (protected, standby).
    double sync_progress = 0;
    // Takeovers by this daemon (failover, coloctl failover, handover), and how long the last
    // one took from the decision until the guest ran here.
    uint64_t failovers = 0;
    uint64_t last_failover_us = 0;
    // The guest's NIC ([vm] net-tap); absent without one. Counters since this daemon started
    // (the NIC's own are part of no checkpoint).
    struct Network {
        bool present = false;
        std::string tap;
        uint64_t tx_frames = 0, tx_bytes = 0;  // the guest sent (taken from its ring)
        uint64_t rx_frames = 0, rx_bytes = 0;  // the guest received (written into its buffers)
        uint64_t rx_dropped = 0;               // for the guest, not taken: its backlog was full
        uint64_t rx_backlog = 0;               // for the guest, waiting for receive buffers
        uint64_t tap_dropped = 0;              // for the network, dropped: the tap's queue was full
        uint64_t bad_chains = 0;               // transmit or receive chains the guest got wrong
        // A COLO secondary: frames of the primary's input it could not keep for its guest
        // (bounded queue; each costs a checkpoint, as the comparison then differs).
        uint64_t input_dropped = 0;
        uint64_t announcements = 0;            // MAC announcements sent (a takeover sends them)
        // A COLO primary: how long the guest's compared frames waited for the secondary's
        // guest to send the same (microseconds, recent frames); 0 otherwise.
        uint64_t compare_us_p50 = 0, compare_us_p99 = 0;
    } network;
    // The guest's disk ([vm] disk); absent without one (docs/disk.md). The copy's figures are
    // the current or last session's; the others since this daemon started.
    struct Disk {
        bool present = false;
        uint64_t bytes = 0;             // the disk's size
        uint64_t blocks = 0;            // 64 KiB blocks the copy compares
        uint64_t copied_blocks = 0;     // the copy: blocks compared (active) or hashed and sent (standby)
        uint64_t sent_blocks = 0;       // the copy: blocks sent because they differed or were written meanwhile
        uint64_t sent_bytes = 0;        // active: the copy's blocks and the checkpoints' writes; standby: received
        uint64_t checkpoint_bytes = 0;  // writes carried by checkpoints (active) or committed (standby)
    } disk;
};

}  // namespace colod::core
