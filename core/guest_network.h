// SPDX-License-Identifier: GPL-2.0-or-later
// A guest's NIC joined to the host's tap interface ([vm] net-tap): frames the guest sends go
// through a packet sink (the replication engine holds or compares them; by default they go
// straight onto the tap), frames arriving on the tap go to the guest once input is started.
//
// A primary opens the tap and starts input at once. A standby opens it at start (so a missing
// tap, or one another process holds, is a start-up error) but reads nothing from it until it
// takes over: then it drops what queued meanwhile, starts input and announces the guest's MAC
// address so that switches and neighbours send its traffic here (docs/network.md).
#pragma once

#include <atomic>
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

namespace virtio {
class NetDevice;
}

class GuestNetwork {
public:
    // Takes one frame the guest sent; false when it cannot now (the NIC keeps the frame in its
    // transmit ring until ready()). Runs on vCPU threads under the NIC's transport lock: it may
    // only queue, never wait.
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

    // Frames arriving on the tap go to the guest from now on; those that queued on the tap
    // before are dropped first (a standby's tap collects the network's traffic for the guest
    // that ran elsewhere). Idempotent.
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

private:
    GuestNetwork(net::Tap tap, virtio::NetDevice& nic);
    bool transmit(std::span<const std::byte> frame);
    void announcer();

    net::Tap m_tap;
    virtio::NetDevice& m_nic;

    std::mutex m_sink_mutex;
    PacketSink m_sink;  // empty: straight onto the tap

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
