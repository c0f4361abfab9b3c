// SPDX-License-Identifier: GPL-2.0-or-later
// COLO's TCP sequence rewriting on the secondary.
//
// In COLO mode both guests run and both receive every frame from the network, but only the
// primary's guest talks to the world. When a connection opens, each guest picks its own
// initial sequence number (ISN), so the secondary's guest numbers its bytes from another
// origin than the primary's: the client acknowledges the primary's numbers, and the
// comparator on the primary sees the secondary's segments at other numbers than the
// primary's. The rewriter sits between the secondary's guest and everything else and moves
// the secondary's sequence space onto the primary's:
//
//   inbound  (world -> secondary's guest):  ack -= offset, and each SACK block's edges;
//                                           TSecr -= ts_offset
//   outbound (secondary's guest -> primary's comparator): seq += offset; TSval += ts_offset
//
// where offset = primary's ISN - secondary's ISN (mod 2^32), and ts_offset the same for the
// origin of the guests' TCP timestamps (RFC 7323): Linux adds a per-connection random offset
// to its TSval, drawn from a secret each guest may have drawn on its own, so after a takeover
// the client would see the survivor's TSvals jump by an arbitrary amount — backwards half the
// time, and then its PAWS check discards every segment of the connection. ts_offset is learnt
// with the ISN's: the peer's acknowledgement of the primary's SYN or SYN-ACK echoes the
// primary's TSval (TSecr), and the secondary's own SYN or SYN-ACK carried its TSval. Once
// learnt it holds, because the two guests' clocks run together (a COLO secondary's clocks go on
// with the primary's at every checkpoint, docs/architecture.md). The secondary's ISN is in the
// SYN or SYN-ACK its guest sends; the primary's is never seen here, but the client's reply to
// it is: a client that connects to the guest acknowledges the primary's SYN-ACK with
// ack = primary's ISN + 1 in its first ACK, and a server the guest connects to acknowledges
// the primary's SYN with the same in its SYN-ACK. Each TCP checksum is updated incrementally
// (RFC 1624), never recomputed: the guests' NIC takes no transmit checksum offload, so their
// frames carry full checksums, and a frame whose checksum was wrong stays exactly as wrong. A
// frame from the world may come with its checksum still to be computed (the NIC's receive
// offloads: the field holds only the pseudo-header's sum, which the rewritten fields are not
// part of): inbound() is told so and leaves that field alone.
//
// A checkpoint makes the secondary's guest a copy of the primary's, TCP sockets included:
// from then on both number every connection alike, and load() of the primary's (empty) table
// forgets every offset. Connections opened since the last checkpoint are all the table ever holds while the
// pair is protected. After a takeover no checkpoint comes: the guest here carries on with the
// sequence numbers it chose, the world knows the primary's, and the rewriter must stay in the
// guest's path (now between the guest and the tap) until those connections end; connections
// opened after the takeover learn offsets of 0 and are not kept.
//
// What is not rewritten (harmless to the guests' TCP, so said once here): the secondary's own
// acknowledgements and SACK blocks, and the peer's TSval, describe the peer's sequence space and
// clock, which both guests share.
//
// Connection lifetime: an entry is made by the guest's SYN or SYN-ACK; once the offset is
// learnt an entry with both offsets 0 is dropped at once (nothing to rewrite). An entry is closed
// by a RST the guest sends or accepts (RFC 5961: sequence number = what the guest acknowledged
// last), or when both FINs have been acknowledged; a closed entry keeps rewriting for a linger
// time (TIME-WAIT retransmissions) and then expire_idle() removes it, as it removes
// handshakes that never completed. Established connections never expire by idleness (an idle
// SSH session after a takeover must live); the table is bounded, and when full the entry idle
// the longest is dropped and counted.
//
// Frames that are not TCP over IPv4 or IPv6 (without extension headers), and malformed or
// truncated ones, pass unchanged. Thread-safe: inbound() and outbound() may run on different
// threads.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "base/result.h"

namespace colod::core::net {

class TcpRewriter {
public:
    using Clock = std::chrono::steady_clock;
    // A handshake not completed within this is forgotten (Linux gives up a SYN after about
    // two minutes of retries).
    static constexpr std::chrono::seconds k_handshake_timeout{120};
    // A closed connection's entry rewrites this long after its last frame (Linux's TIME-WAIT).
    static constexpr std::chrono::seconds k_closed_linger{60};

    explicit TcpRewriter(size_t max_connections = 65536);

    // Whether a frame's TCP checksum field holds its checksum, or only the pseudo-header's
    // sum for whoever computes it later (a virtio-net header's NEEDS_CSUM).
    enum class Checksum { Full, Partial };
    // A frame from the world to the secondary's guest, rewritten in place.
    void inbound(std::span<std::byte> frame, Checksum checksum = Checksum::Full);
    // A frame from the secondary's guest (to the primary's comparator, or to the world after a
    // takeover), rewritten in place.
    void outbound(std::span<std::byte> frame);
    // Removes handshakes idle longer than k_handshake_timeout and closed connections idle
    // longer than k_closed_linger (the owner calls it every few seconds; it walks the table).
    // Returns how many it removed.
    size_t expire_idle(Clock::time_point now);

    // The learnt offsets, for the next secondary (they travel in the checkpoints with the NIC's
    // state): after a takeover the guest here keeps numbering the connections opened under the
    // old primary its own way, and a new secondary's copy of it numbers them alike, so its
    // rewriter needs the same offsets. The k_max_saved most recently active connections with
    // an offset (in a handshake: not saved).
    static constexpr size_t k_max_saved = 1024;
    std::vector<std::byte> save() const;
    // Whether `bytes` is a table save() could have written (sizes, versions, states).
    base::Result<void> check(std::span<const std::byte> bytes) const;
    // Replaces the table with the saved one (empty: none, every offset forgotten): the guest
    // here was just made a copy of the one whose rewriter saved it, a checkpoint loaded.
    void load(std::span<const std::byte> bytes);

    // Connections tracked now (in a handshake, with an offset, or closed and lingering).
    size_t connections() const;
    // Entries dropped because the table was full (each may cost its connection's rewriting).
    uint64_t evicted() const;

private:
    enum class State : uint8_t {
        SynSent,      // the guest connects: its SYN seen, waiting for the server's SYN-ACK
        SynReceived,  // the guest accepts: its SYN-ACK seen, waiting for the client's ACK
        Established,  // offset known
        Closed,       // RST, or both FINs acknowledged: lingering
    };
    struct Key {
        uint8_t version = 0;
        uint16_t local_port = 0, remote_port = 0;
        std::array<uint8_t, 16> local{}, remote{};
        bool operator==(const Key&) const = default;
    };
    struct KeyHash {
        size_t operator()(const Key& key) const;
    };
    struct Connection {
        State state = State::SynSent;
        uint32_t isn = 0;       // the secondary guest's ISN
        uint32_t offset = 0;    // primary's ISN - secondary's ISN
        // Closing, in the primary's sequence space for the guest's side: the sequence number
        // after each FIN (valid once the FIN is seen), and whether the other side acked it.
        bool fin_out = false, fin_in = false;
        bool fin_out_acked = false, fin_in_acked = false;
        uint32_t fin_out_end = 0, fin_in_end = 0;
        bool guest_acked = false;
        uint32_t guest_ack = 0;  // the last acknowledgement the guest sent (RST validation)
        // Timestamps: the TSval of the guest's latest SYN or SYN-ACK (if it had the option),
        // and primary's TSval - secondary's once learnt.
        bool guest_ts = false;
        uint32_t guest_tsval = 0;
        bool ts_known = false;
        uint32_t ts_offset = 0;
        Clock::time_point last{};
        std::list<Key>::iterator lru;
    };
    using Table = std::unordered_map<Key, Connection, KeyHash>;

    // Caller holds m_mutex.
    Connection& start(const Key& key, State state, uint32_t isn, Clock::time_point now);
    void touch(Table::iterator it, Clock::time_point now);
    void erase(Table::iterator it);
    // Learns the offsets from the primary's ISN + 1 acknowledged by the peer and the primary's
    // TSval it echoed (if any); false when both offsets are 0 and the entry was dropped.
    bool learn(Table::iterator it, uint32_t primary_isn_plus_one, std::optional<uint32_t> primary_tsval);
    static void note_guest_timestamp(Connection& connection, std::span<const std::byte> segment, size_t header_length);

    const size_t m_max_connections;
    mutable std::mutex m_mutex;
    Table m_table;
    std::list<Key> m_lru;  // least recently active first
    uint64_t m_evicted = 0;
};

}  // namespace colod::core::net
