// SPDX-License-Identifier: GPL-2.0-or-later
// COLO mode's output channel for the guest's network frames (framing Datagram, name "net"),
// on the primary.
//
// Both guests receive every frame from the network; the secondary's guest's frames (sequence
// numbers moved onto the primary's by its TcpRewriter) come back here, tagged with the epoch
// they were sent in, and are compared with the primary's guest's frames flow by flow. A
// primary frame goes out as soon as the secondary's guest sent the same thing in its flow: the
// secondary's running state then also produced it, so the world sees nothing a takeover could
// contradict. When a flow's frames differ, the channel asks for a checkpoint (Verdict
// Mismatch) and holds that flow until it: captured() seals every frame still held, in the
// primary's order, and committed() sends them once the secondary holds the state that
// produced them (the engine's lifecycle, as for OutputComparator).
//
// Flows. Each frame is classified by what it carries:
//   TCP   by addresses and ports, as sent (all frames here go from the guest outwards);
//   UDP   by addresses and ports;
//   ICMP  (and ICMPv6) by addresses;
//   other IP: a protocol without ports, an IPv4 fragment or an IPv6 packet with extension
//         headers, by addresses and protocol;
//   ARP   one flow; everything else (and frames that do not parse) one "other" flow.
// Frames of different flows are independent: each flow releases as its own frames match, so
// a slow connection does not hold a fast one back and frames may leave out of the primary's
// order across flows (as QEMU's colo-compare does). Within a flow the primary's order is kept,
// across epochs too: a frame matched while an earlier epoch still holds frames of its flow
// waits for that epoch's commit.
//
// What "the same" means:
//   TCP: the sequence space, not the segments. Two guests that write the same bytes cut them
//     into segments by timing (Nagle, autocorking, the congestion window), so the payload is
//     compared as a byte stream by sequence number, FIN counted as the byte after the data;
//     a primary segment goes out once every byte (and FIN) of it has been found equal in the
//     secondary's. SYN and RST segments are compared whole: flags (PSH aside), payload, and
//     for a RST the sequence number; a SYN's is not compared, because the guests pick their
//     own ISNs and the secondary's rewriter cannot know the offset before the peer's reply.
//     Not compared, on purpose:
//       - the ack number and the window: they describe what each guest has received and
//         buffered, which differs by timing only (both receive the same frames from the
//         primary, in order), and they change nothing in the guest's own byte stream;
//       - options: the timestamps come from each guest's clock; SACK blocks follow the
//         arrival timing of the inbound frames; the MSS and window scale of a SYN come from
//         the same configuration on both;
//       - PSH (set where a write ends, which timing decides), ECE and CWR on data segments
//         (congestion signals answered at timing-dependent moments), the checksum (follows
//         from the rest), the IP header (its addresses are the flow; the IPv4 id differs).
//     Segments without payload, SYN, FIN or RST (pure ACKs, window updates, keep-alives and
//     window probes) are not compared: they go out in the flow's order as soon as nothing
//     before them is held, and the secondary's are dropped; so are segments whose bytes were
//     all compared already in this epoch (retransmissions of verified bytes).
//   The ack number, though not compared, bounds when a segment may go: a primary segment
//     with ACK set goes out only once the secondary's guest acknowledged as far in that flow
//     (the highest ack of any of its segments there, pure ACKs included). An ack tells the
//     peer it may forget those bytes; had the primary's gone out first, a takeover before the
//     secondary received them (still in the primary's queue for the link when its host died)
//     would leave the peer's stream with a hole no one can fill. The secondary's acks stay
//     valid across checkpoints (a checkpoint it loads holds every frame forwarded before it),
//     until the comparison stops (a new secondary starts from nothing).
//   Everything else: the whole frame, byte for byte, except the IPv4 header's identification
//     and checksum (the identification comes from per-guest counters and hashes, QEMU's
//     colo-compare ignores it too) and the IPv6 flow label (Linux derives it from a random
//     per-socket hash). Unlike colo-compare, the Ethernet header and the rest of the IP
//     header are compared: a frame that goes to another MAC is another output.
//
// Bounds:
//   - a primary frame unmatched for longer than max_lag, or a secondary frame waiting
//     longer than that for the primary's, gives Verdict::Behind from check_lag() (one
//     verdict per epoch, as every verdict);
//   - held primary bytes above `limit` give Behind from put(); they keep being held (the NIC
//     applies back-pressure from held_bytes());
//   - secondary bytes waiting above `limit`, or more than k_max_flows flows in an epoch,
//     give Behind and stop the comparison until the next checkpoint: the secondary's
//     frames are dropped and every primary frame is held (memory stays bounded).
// Thread-safe; the release function is called without the channel's state lock, one call at
// a time, in release order.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/output_channel.h"
#include "core/output_comparator.h"
#include "core/pause_stats.h"

namespace colod::core::net {

class PacketComparator final : public OutputChannel {
public:
    using Verdict = OutputComparator::Verdict;
    static constexpr size_t k_max_flows = 65536;

    // `verdict` is called (unlocked, from the thread that saw it) when a checkpoint is needed:
    // Mismatch when a flow's frames differ, Behind for the lag and size bounds above.
    PacketComparator(ReleaseFn release, std::chrono::microseconds max_lag, uint64_t limit,
                     std::function<void(Verdict)> verdict);

    std::string_view name() const override { return "net"; }
    // A frame the primary's guest sent (device threads).
    void put(std::span<const std::byte> frame) override;
    // A frame the secondary's guest sent in epoch `epoch` (after the secondary's rewriter).
    void secondary(uint64_t epoch, std::span<const std::byte> frame) override;
    void check_lag() override;
    // Starts comparing with the open epoch `epoch`.
    void protect(uint64_t epoch) override;
    // Machine paused at checkpoint `seq`: every frame still held is sealed as `seq`, in the
    // primary's order; the secondary's unmatched frames are dropped (its run is replaced).
    void captured(uint64_t seq) override;
    // Checkpoint `seq` applied on the secondary: sealed epochs <= seq go out.
    void committed(uint64_t seq) override;
    // No secondary: everything held goes out (sealed first, then the open epoch in the
    // primary's order); frames pass straight through from now on.
    void release_all() override;
    // Everything held is dropped (the standby will send it again); pass-through from now on.
    void discard_all() override;

    // Primary bytes held (open, sealed, or matched and waiting for an earlier epoch's commit).
    uint64_t held_bytes() const override;
    // From a primary frame to its match, in microseconds (compared frames only).
    PauseStats::Summary compare_latency() const override { return m_latency.summary(); }
    // How many times a flow's frames differed, since the start (diagnostics; any thread).
    uint64_t mismatches() const { return m_mismatches.load(std::memory_order_relaxed); }

private:
    using Clock = std::chrono::steady_clock;
    using Bytes = std::vector<std::byte>;

    enum class FlowKind : uint8_t { Tcp, Udp, Icmp, Ip, Arp, Other };
    struct FlowKey {
        FlowKind kind = FlowKind::Other;
        uint8_t version = 0;
        uint8_t protocol = 0;
        uint16_t vlan = 0;
        uint16_t source_port = 0, destination_port = 0;
        std::array<uint8_t, 16> source{}, destination{};
        bool operator==(const FlowKey&) const = default;
    };
    struct FlowKeyHash {
        size_t operator()(const FlowKey& key) const;
    };
    // What the comparison needs of a frame, found once when it arrives.
    enum class Unit : uint8_t {
        Whole,    // compared byte for byte (non-TCP)
        Stream,   // TCP payload and/or FIN: compared in the flow's sequence space
        Segment,  // TCP SYN or RST: compared as a segment
        Free,     // TCP without payload, SYN, FIN or RST: never compared
    };
    struct Shape {
        FlowKey key;
        Unit unit = Unit::Whole;
        // TCP: sequence and ack numbers, flags, payload position; `end` = seq + payload + FIN.
        uint32_t seq = 0, end = 0, ack = 0;
        uint8_t flags = 0;
        size_t payload = 0, payload_length = 0;
        // Whole: the IP header's position and version, for the fields not compared.
        size_t l3 = 0;
        uint8_t ip_version = 0;
    };
    struct Held {  // a primary frame not released
        Bytes bytes;
        Shape shape;
        Clock::time_point at;
    };
    struct Waiting {  // a secondary frame (Whole/Segment) or its payload (Stream) not matched
        Bytes bytes;
        Shape shape;
        uint64_t ordinal = 0;
    };
    struct Flow {
        std::deque<uint64_t> primary;  // ordinals into m_held, in arrival order
        std::deque<Waiting> secondary;
        bool diverged = false;
        // TCP: the sequence number up to which both guests' bytes were found equal.
        bool verified_valid = false;
        uint32_t verified = 0;
    };
    struct Sealed {
        uint64_t seq;
        std::vector<Bytes> frames;
    };
    enum class Step { Release, Wait, Differ };

    static Shape shape_of(std::span<const std::byte> frame);
    // Caller holds m_mutex. Matches the flow's frames; released frames go to `out`.
    void match(Flow& flow, std::vector<Bytes>& out, Verdict& verdict);
    Step step_whole(Flow& flow, const Held& held);
    Step step_segment(Flow& flow, const Held& held);
    Step step_stream(Flow& flow, const Held& held, bool& compared);
    // Whether the secondary's guest acknowledged as far as `shape` (a TCP segment with ACK set;
    // true for any other frame).
    bool acked_by_secondary(const Shape& shape) const;
    void note_secondary_ack(const Shape& shape);
    void drop_front(Flow& flow);
    void release_held(uint64_t ordinal, std::vector<Bytes>& out);
    void ask(Verdict wanted, Verdict& verdict);
    void stop_matching(Verdict& verdict);
    Flow* flow_for(const FlowKey& key, Verdict& verdict);
    void reset_epoch(uint64_t epoch);
    void stop_comparing();
    void release(std::vector<Bytes>& out);  // under m_release_mutex

    ReleaseFn m_release;
    std::chrono::microseconds m_max_lag;
    uint64_t m_limit;
    std::function<void(Verdict)> m_verdict;

    mutable std::mutex m_mutex;
    std::mutex m_release_mutex;  // keeps released frames in order
    bool m_comparing = false;
    uint64_t m_epoch = 0;
    // Open epoch: primary frames not released, by arrival ordinal (the primary's order).
    std::map<uint64_t, Held> m_held_frames;
    uint64_t m_next_ordinal = 0;
    std::unordered_map<FlowKey, Flow, FlowKeyHash> m_flows;
    // Secondary frames waiting, by ordinal: the oldest one's arrival time for the lag bound.
    std::map<uint64_t, Clock::time_point> m_waiting_since;
    uint64_t m_secondary_bytes = 0;
    bool m_stopped_matching = false;  // until the next checkpoint: hold everything
    bool m_verdict_pending = false;
    std::deque<Sealed> m_sealed;
    // Flows with frames in a sealed epoch: the newest such epoch (matched frames wait for it).
    std::unordered_map<FlowKey, uint64_t, FlowKeyHash> m_sealed_flows;
    // TCP flows: the highest ack the secondary's guest sent (across epochs; at most
    // k_max_flows, forgotten all at once beyond that, which only holds frames longer).
    std::unordered_map<FlowKey, uint32_t, FlowKeyHash> m_secondary_acks;
    std::atomic<uint64_t> m_held{0};  // written under m_mutex, read anywhere
    std::atomic<uint64_t> m_mismatches{0};
    PauseStats m_latency;
};

}  // namespace colod::core::net
