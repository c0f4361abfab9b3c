// SPDX-License-Identifier: GPL-2.0-or-later
// A guest NIC's way to the host's network: an existing tap interface, attached to by name.
// colod never creates or configures the interface (its bridge, addresses and owner are the
// administrator's, made with `ip tuntap add dev NAME mode tap [user U]`); it only attaches to
// it, reads the frames the host sends towards the guest and writes the guest's frames.
//
// The tap is opened with IFF_VNET_HDR: a 12-byte virtio-net header (VnetHeader) goes in front
// of every frame both ways. Frames written carry an empty one (the guest's NIC takes no
// transmit offloads). Frames read carry what the host left undone, as far as set_offloads()
// lets the tap hand it over: by default nothing (every frame whole, its checksums computed);
// with checksum and TCP segmentation offloads a host TCP stream crosses in segments of up to
// 64 KiB with their checksums unfinished, which is what makes a guest's receive path cheap.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>

#include "base/fd.h"
#include "base/result.h"
#include "core/net/vnet_header.h"

namespace colod::core::net {

class Tap {
public:
    // Enough for any frame a tap hands over: its MTU is at most 65521 (Linux's tun maximum),
    // plus the Ethernet header and a VLAN tag; a segmentation offload's frame is an IP packet
    // of at most 65535 bytes with the same headers.
    static constexpr size_t k_max_frame = 65550;

    // Offloads the reader of the tap can finish (TUNSETOFFLOAD), from the guest's NIC: the
    // host may then hand over frames that need them.
    enum Offload : unsigned {
        k_offload_csum = 1u << 0,  // checksums left to finish (NEEDS_CSUM)
        k_offload_tso4 = 1u << 1,  // TCP over IPv4 in 64 KiB segments (needs k_offload_csum)
        k_offload_tso6 = 1u << 2,  // the same over IPv6
    };

    // Attaches to the existing tap interface `name` (non-blocking, close-on-exec). Never
    // creates one: a missing interface, an interface of another kind (tun, veth, bridge, a
    // multi-queue tap), a tap attached to another process and a name longer than IFNAMSIZ - 1
    // are errors that name the interface and say what to do. No offloads at first.
    static base::Result<Tap> open(const std::string& name);

    Tap(Tap&& other) noexcept;
    Tap& operator=(Tap&& other) noexcept;
    Tap(const Tap&) = delete;
    Tap& operator=(const Tap&) = delete;
    ~Tap() = default;

    const std::string& name() const { return m_name; }
    // For poll(2); the Tap keeps owning it.
    int fd() const { return m_fd.get(); }

    // Writes one Ethernet frame to the host (behind an empty virtio-net header). A full tap
    // queue (EAGAIN) drops the frame and still succeeds (a network may drop; dropped() counts
    // them); any other failure is an error: a tap that is down (EIO), a frame shorter than an
    // Ethernet header (EINVAL). read(), write() and set_offloads() may run on several threads
    // at once.
    base::Result<void> write(std::span<const std::byte> frame);
    struct Received {
        size_t length = 0;  // the frame's, in the buffer given
        VnetHeader header;  // what is left to do on it (nothing unless set_offloads() allowed it)
    };
    // Reads one frame from the host into `buffer` (k_max_frame bytes always suffice), or
    // std::nullopt when no frame is waiting. A frame longer than `buffer` is an error (the
    // frame is lost).
    base::Result<std::optional<Received>> read(std::span<std::byte> buffer);
    // Which offloads the host may leave to colod from now on (Offload bits; 0: none). Frames
    // queued before keep the form they had.
    base::Result<void> set_offloads(unsigned offloads);

    // Frames write() dropped because the tap's queue was full. Any thread.
    uint64_t dropped() const { return m_dropped.load(std::memory_order_relaxed); }

private:
    Tap(base::Fd fd, std::string name) : m_fd(std::move(fd)), m_name(std::move(name)) {}

    base::Fd m_fd;
    std::string m_name;
    std::atomic<uint64_t> m_dropped{0};
};

// A thread that reads every frame arriving on a tap and hands each to `deliver`, until stop()
// or destruction. It sleeps in poll(2) on the tap and an eventfd that stop() signals; nothing
// in it sleeps for a time.
//
// The Tap must stay where it is (not moved, not destroyed) until the reader has stopped. A
// read error (the interface was deleted, say) ends the thread: it is logged once and
// failure() returns it.
class TapReader {
public:
    // `deliver` runs on the reader's thread with a frame valid only during the call; it must
    // not call stop() or destroy the reader.
    using Deliver = std::function<void(const VnetHeader& header, std::span<const std::byte> frame)>;

    static base::Result<std::unique_ptr<TapReader>> start(Tap& tap, Deliver deliver);

    TapReader(const TapReader&) = delete;
    TapReader& operator=(const TapReader&) = delete;
    ~TapReader();

    // Wakes the thread and waits for it to end: once stop() returns, `deliver` is not running
    // and will not be called again. Idempotent; any thread but the reader's own.
    void stop();
    // The read error that ended the thread, if one did. Any thread.
    std::optional<base::Error> failure() const;

private:
    TapReader(Tap& tap, Deliver deliver, base::Fd wake);
    void run();

    Tap* const m_tap;
    const Deliver m_deliver;
    const base::Fd m_wake;  // eventfd: readable once stop() was called
    std::atomic<bool> m_stopping{false};
    mutable std::mutex m_failure_mutex;
    std::optional<base::Error> m_failure;
    std::mutex m_join_mutex;  // one stop() joins, the others wait for it
    std::thread m_thread;
};

}  // namespace colod::core::net
