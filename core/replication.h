// SPDX-License-Identifier: GPL-2.0-or-later
// What both replication engines share: their settings and small helpers.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "proto/key_ring.h"
#include "proto/messages.h"

namespace colod::core {

enum class ReplicationMode { Checkpoint, Colo };

struct ReplicationConfig {
    std::string vm_name;
    std::string role;          // the daemon: "primary" or "secondary" (status and logs)
    std::string self_address;  // this host's replication endpoint, "host:port"
    std::string peer_address;  // the other host's replication endpoint
    std::shared_ptr<const proto::KeyRing> key;  // the accepted keys; a reload changes them for later handshakes
    proto::LinkSecurity link_security = proto::LinkSecurity::Encrypted;
    ReplicationMode mode = ReplicationMode::Checkpoint;
    std::chrono::microseconds checkpoint_interval{100'000};
    std::chrono::microseconds heartbeat_interval{50'000};
    std::chrono::microseconds heartbeat_timeout{300'000};
    std::chrono::microseconds connect_retry{1'000'000};
    uint64_t max_held_output = 1 << 20;
    std::string fence_command;
    std::chrono::milliseconds fence_timeout{60'000};
    // How long the active side waits for each answer to a checkpoint (a stuck but heartbeating
    // peer must not hold the guest's output for ever). Not a config key.
    std::chrono::milliseconds ack_timeout{30'000};
};

// Frames of a checkpoint are at most this big, so that a heartbeat never waits long behind
// one (1 MiB takes ~9 ms at 1 Gbit/s, ~85 ms at 100 Mbit/s).
inline constexpr uint32_t k_checkpoint_frame_payload = 1u << 20;

// How long to wait for a connection and for a handshake.
inline constexpr std::chrono::milliseconds k_connect_timeout{1000};
inline constexpr std::chrono::milliseconds k_handshake_timeout{2000};

inline std::string_view mode_name(ReplicationMode mode) {
    return mode == ReplicationMode::Colo ? "colo" : "checkpoint";
}

}  // namespace colod::core
