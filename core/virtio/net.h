// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-net (virtio 1.x §5.1): device id 1, one receive queue (0) and one transmit queue (1),
// no control queue, no multiqueue. Offered: VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS and the
// receive offloads VIRTIO_NET_F_GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6; no transmit offloads
// and no VIRTIO_NET_F_MRG_RXBUF: each frame received goes into one device-writable chain (a
// guest that takes GUEST_TSO posts chains with room for 64 KiB: Linux's "big packets") and
// each chain the guest transmits is one whole frame with its checksums. Both directions put
// the 12-byte struct virtio_net_hdr_v1 in front of the frame (VERSION_1, which the transport
// negotiates). Configuration space: mac[6], then status (u16, little-endian), where
// VIRTIO_NET_S_LINK_UP is always set.
//
// Receive offloads: a frame comes with its net::VnetHeader (from the tap, or from the primary
// in COLO mode) and goes to the guest with it as far as the guest accepted the offloads it
// uses; the NIC finishes what the guest did not accept where it can. An unfinished checksum
// (NEEDS_CSUM) for a guest without GUEST_CSUM is computed here; DATA_VALID is cleared for it;
// a 64 KiB segment (GSO) for a guest without the matching GUEST_TSO, or with a header that
// does not describe the frame, is dropped (rx_dropped and bad_headers count it; TCP sends it
// again, and the tap stops making them once told: set_offload_listener()).
//
// What the device does with each chain the guest makes available (every chain is hostile):
//   - transmitq: the header is skipped and the frame handed to the Transmit sink; the chain
//     is returned (used length 0) once the sink took it. A sink that cannot take it now
//     leaves it in the ring, untaken, until tx_ready(); so does a missing sink, until
//     set_transmit(). A chain with a device-writable buffer, shorter than the header or
//     carrying a frame longer than k_max_frame breaks the queue (DEVICE_NEEDS_RESET, the
//     transport's queue_broken()); a frame shorter than an Ethernet header is returned
//     unsent. Both count in bad_chains.
//   - receiveq: a zeroed header (num_buffers = 1, as VERSION_1 asks even without
//     MRG_RXBUF), then the frame; the chain is returned with their length. A chain with a
//     device-readable buffer breaks the queue. A chain too small for header and frame is
//     returned with used length 0 (Linux counts it as a length error and reposts the buffer)
//     and the frame is dropped: both rx_dropped and bad_chains count it. Keeping the chain
//     would stop reception altogether, since chains are taken in order.
//
// Replication: the device's own state is the guest's IPv4 address, learned from frames it
// sends (a secondary that takes over announces it by gratuitous ARP), and the receive backlog.
// A frame receive() accepted counts as received, like one in a NIC's ring, so it travels in
// the checkpoint with the guest's memory: a takeover never loses it, and in COLO mode the
// secondary's guest gets it too instead of diverging from the primary's. Nothing reaches
// guest memory while the device is quiesced; what arrives meanwhile waits in the backlog,
// which is saved as it stands.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "core/net/frames.h"
#include "core/net/vnet_header.h"
#include "core/virtio/device.h"

namespace colod::core::virtio {

class NetDevice final : public VirtioDevice {
public:
    static constexpr uint32_t k_device_id = 1;
    static constexpr uint16_t k_queue_size = 256;
    // 2: the receive backlog joined the learned address. 3: each backlogged frame has its
    // virtio-net header.
    static constexpr uint16_t k_state_version = 3;
    static constexpr uint16_t k_receive_queue = 0;
    static constexpr uint16_t k_transmit_queue = 1;
    // Device feature bits (§5.1.3).
    static constexpr uint64_t k_feature_guest_csum = 1ull << 1;
    static constexpr uint64_t k_feature_mac = 1ull << 5;
    static constexpr uint64_t k_feature_guest_tso4 = 1ull << 7;
    static constexpr uint64_t k_feature_guest_tso6 = 1ull << 8;
    static constexpr uint64_t k_feature_status = 1ull << 16;
    static constexpr uint64_t k_features = k_feature_guest_csum | k_feature_mac | k_feature_guest_tso4 |
                                           k_feature_guest_tso6 | k_feature_status;
    // Configuration status bit (§5.1.4).
    static constexpr uint16_t k_status_link_up = 1;
    // struct virtio_net_hdr_v1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
    // num_buffers.
    static constexpr size_t k_header_size = net::VnetHeader::k_size;
    // The longest frame the device passes in either direction (a tap's largest MTU, 65521,
    // plus an Ethernet header and a VLAN tag, rounded up): without HOST_TSO no guest sends
    // more, and a received 64 KiB segment is an IP packet of at most 65535 bytes.
    static constexpr size_t k_max_frame = 65550;
    // The shortest: an Ethernet header.
    static constexpr size_t k_min_frame = 14;
    // Frames received that wait for receive buffers, at most (beyond either bound they are
    // dropped and counted in rx_dropped). The backlog is saved state, and a device's state
    // travels whole in one frame of a checkpoint (1 MiB, core/replication.h) and under the
    // transport's cap on a model's state: the byte bound leaves room for the rest of it. A
    // full backlog of 1514-byte frames (a 1500-byte MTU) is well within it, and so are eleven
    // 64 KiB segments.
    static constexpr size_t k_rx_backlog = 256;
    static constexpr size_t k_rx_backlog_bytes = 768u << 10;
    // State that belongs to whatever stands between this NIC and the world, saved and loaded
    // with the NIC's own: COLO's TCP rewriter, whose learnt offsets must follow the guest to a
    // new secondary. At most k_max_companion_state bytes.
    class Companion {
    public:
        virtual ~Companion() = default;
        virtual std::vector<std::byte> save_companion() const = 0;
        virtual base::Result<void> check_companion(std::span<const std::byte> bytes) const = 0;
        // Replaces the companion's state with `bytes` (empty: the saving side had none).
        virtual void load_companion(std::span<const std::byte> bytes) = 0;
    };
    static constexpr size_t k_max_companion_state = 96u << 10;
    // The longest state save_state() gives: address, frame count, a full backlog with a header
    // and a length in front of each frame, and the companion's bytes with their length.
    static constexpr size_t k_max_state_size =
        4 + 4 + (k_header_size + 4) * k_rx_backlog + k_rx_backlog_bytes + 4 + k_max_companion_state;

    using Mac = net::Mac;
    // One Ethernet frame the guest sent (without the virtio-net header), valid during the
    // call only. Called with the transport's lock held, on the thread that took the guest's
    // notification (a vCPU's or the transport's doorbell thread) or on whichever thread called
    // tx_ready(), set_transmit() or resume(): it may only queue the frame, never
    // do I/O, block, or call into the device. Returns false when the sink cannot take it now
    // (back-pressure): the chain stays in the transmit ring, untaken, and the device tries it
    // again when tx_ready() is called.
    using Transmit = std::function<bool(std::span<const std::byte> frame)>;

    // `transmit` may be empty: frames then wait in the ring until set_transmit() gives a sink.
    NetDevice(Mac mac, Transmit transmit);

    // The companion whose state travels with the NIC's (null: none; a state saved with one is
    // then loaded without it). Set before the machine runs.
    void set_companion(std::shared_ptr<Companion> companion) { m_companion = std::move(companion); }

    // Replaces the sink (a secondary taking over switches to its own tap's). Any thread; takes
    // the transport's lock, so never from inside a Transmit call. Sends what the guest has
    // queued if the new sink takes it.
    void set_transmit(Transmit transmit);
    // A frame from the world for the guest, with what is left to do on it (`header`: the top
    // says what the guest gets of it). Any thread; takes the transport's lock. Written
    // into the next receive chain and the driver interrupted (unless it suppressed that).
    // When the guest has no receive buffer posted, or the device is not active or is quiesced,
    // the frame waits in a bounded backlog (k_rx_backlog), delivered in order as soon as
    // buffers come (a notification on the receive queue) or on resume(). Returns false when
    // the frame was dropped: backlog full, not an Ethernet frame (k_min_frame to k_max_frame
    // bytes), a header the guest cannot take, a receive chain too small for it, or a broken
    // receive queue. Frames waiting
    // before it are tried first, so a backlog that came with a loaded state moves on with the
    // next frame even if nothing resumed the device (a standby's machine starts after a load
    // without a resume()).
    bool receive(std::span<const std::byte> frame, const net::VnetHeader& header = {});
    // Told the receive offloads the guest accepts whenever they change: its features at
    // DRIVER_OK, none at a reset. Called with the transport's lock held, on a vCPU thread: it
    // may only do what never waits for this device (setting a tap's offloads). Set before the
    // machine runs, or replaced later (any thread, takes the transport's lock; null: none);
    // a new listener is told the present features at once.
    using OffloadListener = std::function<void(uint64_t features)>;
    void set_offload_listener(OffloadListener listener);
    // Tells the listener the present features again: a state loaded since (a standby taking
    // over) brought the driver's without an activation. Any thread; takes the transport's lock.
    void refresh_offloads();
    // The features of k_features the driver accepted, while it runs (DRIVER_OK; else 0): what
    // the listener was last told. Any thread; takes the transport's lock.
    uint64_t guest_features() const;
    // The sink takes frames again. Any thread; takes the transport's lock, so the caller must
    // hold no lock that the Transmit function takes (the transport's lock is the outer one).
    void tx_ready();
    // The guest's IPv4 address (host byte order) as learned from frames it sent: the sender
    // address of every ARP request or reply from its MAC, else, while none is known, the
    // source of an IPv4 packet from its MAC (see net::sender_address()). 0 until known. Part
    // of the saved state (so is the receive backlog: see the top).
    uint32_t learned_ipv4() const;
    Mac mac() const { return m_mac; }
    struct Counters {
        uint64_t tx_frames = 0, tx_bytes = 0;  // taken by the sink; bytes without the header
        uint64_t rx_frames = 0, rx_bytes = 0;  // written into the guest's buffers
        uint64_t rx_dropped = 0;               // frames receive() did not deliver
        uint64_t bad_chains = 0;               // chains the guest got wrong (see the top)
        uint64_t rx_gso_frames = 0;            // of rx_frames, 64 KiB segments (GSO)
        uint64_t rx_csum_done = 0;             // NEEDS_CSUM frames finished here (see the top)
        uint64_t bad_headers = 0;              // frames dropped for their header (see the top)
    };
    // Any thread; takes the transport's lock.
    Counters counters() const;
    // Frames waiting for receive buffers. Any thread; takes the transport's lock. Part of the
    // saved state.
    size_t rx_backlog() const;

    // VirtioDevice.
    std::string_view type_name() const override { return "net"; }
    uint32_t device_id() const override { return k_device_id; }
    uint64_t device_features() const override { return k_features; }
    uint16_t queue_count() const override { return 2; }
    uint16_t queue_max_size(uint16_t) const override { return k_queue_size; }
    void attach(Transport& transport) override { m_transport = &transport; }
    void read_config(uint32_t offset, std::span<std::byte> data) override;
    // The configuration space is read-only in virtio 1.x (the MAC is changed only through a
    // control queue, which is not offered): writes are ignored.
    void write_config(uint32_t, std::span<const std::byte>) override {}
    void activate() override;
    // Nothing is in flight (chains are taken only when complete). Frames waiting for receive
    // buffers keep waiting: Linux resets the device when its driver probes, and frames that
    // came before are delivered once it posts buffers (as far as their headers suit what the
    // driver accepts then). The learned address stays too: the guest's address does not
    // change because its driver restarted. The offload listener hears "none".
    void reset() override;
    void queue_notify(uint16_t index) override;
    uint16_t state_version() const override { return k_state_version; }
    // The learned address and the receive backlog, frame by frame. Lock held (the transport
    // calls these under it, so they do not take it again) and the device quiesced: no frame
    // reaches the guest between the capture of its memory and of the backlog. receive() may
    // still add frames meanwhile; the lock keeps them out of a half-written state and they go
    // into the next checkpoint. load_state() replaces the backlog with the saved one, to be
    // delivered as any backlog is: on resume(), when buffers come, or before the next frame.
    std::vector<std::byte> save_state() const override;
    base::Result<void> check_state(uint16_t version, std::span<const std::byte> bytes) const override;
    base::Result<void> load_state(uint16_t version, std::span<const std::byte> bytes) override;

    // Pausable: while quiesced nothing touches guest memory or calls the sink (received frames
    // wait in the backlog, transmit notifications are remembered only as the ring's state);
    // resume() sends and delivers whatever became possible meanwhile.
    void quiesce() override;
    void resume() override;

private:
    enum class RxOutcome { Delivered, Dropped, NoBuffer, Broken };
    struct RxFrame {
        net::VnetHeader header;
        std::vector<std::byte> frame;
    };

    // The device may use its queues now (transport lock held).
    bool can_run() const;
    // Sends every frame the guest has queued that the sink takes (transport lock held).
    void process_tx();
    // Delivers backlogged frames while receive chains last (transport lock held).
    void deliver_backlog();
    // Puts `frame` into the next receive chain; sets `pushed` when a chain was returned.
    RxOutcome deliver(const net::VnetHeader& header, std::span<const std::byte> frame, bool& pushed);
    // The header the guest gets for `frame`, finishing in `scratch` what it does not accept
    // (then `frame` points there and `finished_here` is set); nothing when the frame is to be
    // dropped (counted).
    std::optional<net::VnetHeader> header_for_guest(const net::VnetHeader& header, std::span<const std::byte>& frame,
                                                    std::vector<std::byte>& scratch, bool& finished_here);
    base::Result<void> write_chain(const Chain& chain, const net::VnetHeader& header, std::span<const std::byte> frame);
    base::Result<void> read_chain(const Chain& chain);
    uint64_t guest_features_locked() const;
    void learn(std::span<const std::byte> frame);
    struct SavedState {
        uint32_t learned_ipv4 = 0;
        std::deque<RxFrame> backlog;
        size_t backlog_bytes = 0;
        std::vector<std::byte> companion;
    };
    base::Result<SavedState> decode_state(uint16_t version, std::span<const std::byte> bytes) const;

    const Mac m_mac;
    const std::string m_log_name;  // "virtio-net 52:54:00:..." for log records
    Transport* m_transport = nullptr;
    Transmit m_transmit;
    bool m_quiesced = false;
    bool m_tx_blocked = false;  // the sink refused a frame; waiting for tx_ready()
    uint32_t m_learned_ipv4 = 0;
    std::deque<RxFrame> m_backlog;
    size_t m_backlog_bytes = 0;  // of the frames, without their headers
    Counters m_counters;
    std::vector<std::byte> m_tx_buffer;  // header + frame of the chain being sent
    std::vector<std::byte> m_rx_scratch;  // a received frame finished here (see the top)
    OffloadListener m_offload_listener;
    std::shared_ptr<Companion> m_companion;
};

}  // namespace colod::core::virtio
