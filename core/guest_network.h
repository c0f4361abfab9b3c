// SPDX-License-Identifier: GPL-2.0-or-later
// A guest's NIC joined to the host's tap interface ([vm] net-tap): frames the guest sends go
// through a packet sink (the replication engine holds or compares them; by default they go
// straight onto the tap), frames arriving on the tap go to the guest once input is started.
//
// A primary opens the tap and starts input at once. A standby opens it at start (so a missing
// tap, or one another process holds, is a start-up error) but reads nothing from it until it
// takes over: then it drops what queued meanwhile, starts input and announces the guest's MAC
// address so that switches and neighbours send its traffic here (docs/network.md).
//
// COLO adds two hooks. On the primary, an input hook sees every frame from the tap and gives it
// to the guest (deliver()) and to the secondary in one order. On the secondary, a TCP sequence
// rewriter (net::TcpRewriter) sits between the guest and everything else: deliver() rewrites
// frames on their way in, and the guest's frames are rewritten before they reach the sink. It
// stays for the guest's life: after a takeover, connections opened under the old primary still
// need it.
//
// Receive offloads: the tap hands over frames with their checksums unfinished and TCP streams
// in segments of up to 64 KiB exactly as far as the guest's NIC accepted them (its offload
// listener sets the tap's offloads whenever the guest's driver starts or resets, and
// start_input() sets them from a state loaded meanwhile); each frame carries its virtio-net
// header to the NIC, and to the secondary in COLO mode.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>

#include "base/result.h"
#include "core/net/tap.h"

namespace colod::core {

namespace net {
class TcpRewriter;
}

namespace virtio {
class NetDevice;
}

struct Status;

class GuestNetwork {
public:
    // Takes one frame the guest sent; false when it cannot now (the NIC keeps the frame in its
    // transmit ring until ready()). Runs on the NIC's doorbell thread (or a vCPU's) under the
    // NIC's transport lock: it may only queue, never wait.
    using PacketSink = std::function<bool(std::span<const std::byte>)>;

    // Opens the tap `tap_name` (it must exist and be used by no other process) and routes the
    // NIC's transmitted frames through the sink. `nic` must outlive this object.
    static base::Result<std::unique_ptr<GuestNetwork>> open(const std::string& tap_name, virtio::NetDevice& nic);
    // Stops input and the announcer; the NIC's frames are dropped from then on.
    ~GuestNetwork();
    GuestNetwork(const GuestNetwork&) = delete;
    GuestNetwork& operator=(const GuestNetwork&) = delete;

    const std::string& tap_name() const { return m_tap.name(); }

    // Where the guest's frames go; empty: straight onto the tap (the unprotected case).
    void set_sink(PacketSink sink);
    // One frame onto the tap now (the held-output path releases through this). A full tap
    // queue drops the frame, as a switch would; any other failure is logged once. Any thread;
    // takes no lock, so it may run under the NIC's (it does, on the unprotected path).
    void release(std::span<const std::byte> frame);
    // The sink takes frames again: the NIC sends what waits in its ring.
    void ready();

    // One frame from the world for the guest's NIC, with its virtio-net header, through the
    // rewriter when there is one. False when the NIC did not take it (see
    // virtio::NetDevice::receive). Any thread; takes the NIC's transport lock.
    bool deliver(std::span<const std::byte> frame, const net::VnetHeader& header = {});
    // Where frames from the tap go once input is started; empty: straight to deliver(). The
    // hook runs on the tap's reader thread; set_input_hook() waits for a call in progress, so it
    // must not be called from inside the hook or under a lock the hook takes.
    using InputHook = std::function<void(const net::VnetHeader&, std::span<const std::byte>)>;
    void set_input_hook(InputHook hook);
    // The TCP sequence rewriter for the guest's frames both ways (null: none). Any thread.
    void set_rewriter(std::shared_ptr<net::TcpRewriter> rewriter);

    // Frames arriving on the tap go to the guest from now on; those that queued on the tap
    // before are dropped first (a standby's tap collects the network's traffic for the guest
    // that ran elsewhere), and the tap's offloads are set from the guest's NIC as it stands
    // (a standby's came with the loaded state). Idempotent. Not under the NIC's lock.
    base::Result<void> start_input();
    bool input_started() const;

    // Tells the network the guest's MAC address lives behind this tap now: a RARP announce and,
    // when the guest's IPv4 address is known (the NIC learns it from what the guest sends, and
    // it travels in the checkpoints), a gratuitous ARP, k_announce_rounds times over the next
    // half second, from a thread of its own. Returns at once.
    void announce();
    static constexpr int k_announce_rounds = 5;
    // Announcements sent so far (tests and status).
    uint64_t announcements() const;
    // The NIC's and the tap's counters into `network` (Status::Network; `present` and the tap's
    // name too). Any thread; takes the NIC's transport lock, so not under a lock a vCPU holds.
    void fill_status(Status& status) const;

private:
    GuestNetwork(net::Tap tap, virtio::NetDevice& nic);
    bool transmit(std::span<const std::byte> frame);
    void from_tap(const net::VnetHeader& header, std::span<const std::byte> frame);
    // The NIC's offload listener: the tap's offloads to what the guest accepts (under the NIC's
    // lock: an ioctl, nothing that waits for the guest).
    void set_offloads(uint64_t guest_features);
    void announcer();
    // The rewriter, and its idle connections expired now and then (any thread).
    std::shared_ptr<net::TcpRewriter> rewriter();

    net::Tap m_tap;
    virtio::NetDevice& m_nic;

    std::mutex m_sink_mutex;
    PacketSink m_sink;  // empty: straight onto the tap

    std::mutex m_input_hook_mutex;  // held while the hook runs
    InputHook m_input_hook;
    std::mutex m_rewriter_mutex;
    std::shared_ptr<net::TcpRewriter> m_rewriter;  // guarded by m_rewriter_mutex
    std::chrono::steady_clock::time_point m_next_expiry{};  // guarded by m_rewriter_mutex

    // Never held together with the NIC's transport lock (which vCPUs hold when they call
    // transmit()), in either order.
    mutable std::mutex m_mutex;
    std::unique_ptr<net::TapReader> m_reader;  // input started
    std::condition_variable m_announce_wake;
    bool m_stopping = false;
    int m_announce_pending = 0;  // rounds still to send
    uint64_t m_announced = 0;
    std::thread m_announcer;
    std::atomic<bool> m_release_failed_logged{false};  // release() takes no lock
};

}  // namespace colod::core
