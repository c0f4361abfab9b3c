// SPDX-License-Identifier: GPL-2.0-or-later
// A fake virtio driver for device tests without KVM: guest memory, one device behind a real
// MmioTransport, and a driver that does what Linux's virtio_mmio and virtio_ring do (feature
// negotiation, split queues, descriptor chains, used-ring polling, interrupt acknowledgement),
// writing the rings into guest memory as a guest would. NetDriver adds what virtio_net does
// with its receive and transmit queues.
//
// The driver runs on the test's thread. The device may run on others (a tap reader calling
// NetDevice::receive): the rings are published with the same acquire/release pairs as in a
// guest, and `line`/`line_changes` are written under the transport's lock, so read them only
// while no other thread drives the device.
#pragma once

#include <catch2/catch.hpp>

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "core/guest_memory.h"
#include "core/net/frames.h"
#include "core/virtio/mmio.h"
#include "core/virtio/net.h"

namespace colod::test {

// Where the device's window sits and how much RAM the guest has.
inline constexpr uint64_t k_base = 0xd000'0000;
inline constexpr uint64_t k_ram = 16 << 20;

// virtio-mmio register offsets (virtio 1.x §4.2.2), as the driver knows them.
enum MmioReg : uint64_t {
    MAGIC = 0x000, VERSION = 0x004, DEVICE_ID = 0x008, VENDOR_ID = 0x00c, DEV_FEATURES = 0x010,
    DEV_FEATURES_SEL = 0x014, DRV_FEATURES = 0x020, DRV_FEATURES_SEL = 0x024, QUEUE_SEL = 0x030,
    QUEUE_NUM_MAX = 0x034, QUEUE_NUM = 0x038, QUEUE_READY = 0x044, QUEUE_NOTIFY = 0x050, INT_STATUS = 0x060,
    INT_ACK = 0x064, STATUS = 0x070, DESC_LO = 0x080, DESC_HI = 0x084, DRIVER_LO = 0x090, DRIVER_HI = 0x094,
    DEVICE_LO = 0x0a0, DEVICE_HI = 0x0a4, CONFIG_GEN = 0x0fc, CONFIG = 0x100,
};

using Frame = std::vector<std::byte>;
// A used-ring element: chain head and length written.
using Used = std::pair<uint32_t, uint32_t>;

// Guest memory (filled with 0xaa, so that stray writes show) and one device's transport at
// k_base, with accessors for both as the guest sees them.
struct VirtioRig {
    core::GuestMemory memory = core::GuestMemory::create(k_ram).value();
    std::vector<bool> line_changes;  // every level driven on the interrupt line
    bool line = false;
    std::unique_ptr<core::virtio::MmioTransport> transport;

    VirtioRig() {
        auto all = memory.all();
        std::fill(all.begin(), all.end(), std::byte{0xaa});
    }
    VirtioRig(const VirtioRig&) = delete;
    VirtioRig& operator=(const VirtioRig&) = delete;

    // Puts `device` behind the transport (once, in the derived rig's constructor).
    void attach(std::unique_ptr<core::virtio::VirtioDevice> device) {
        transport = core::virtio::MmioTransport::create(std::move(device), k_base, memory, [this](bool level) {
                        line_changes.push_back(level);
                        line = level;
                    }).value();
    }

    uint32_t read(uint64_t offset) {
        uint32_t value = 0;
        transport->mmio_read(k_base + offset, std::as_writable_bytes(std::span(&value, 1)));
        return value;
    }
    void write(uint64_t offset, uint32_t value) { transport->mmio_write(k_base + offset, std::as_bytes(std::span(&value, 1))); }
    std::byte* at(uint64_t gpa) { return memory.all().data() + gpa; }
    template <typename T>
    void poke(uint64_t gpa, T value) { std::memcpy(at(gpa), &value, sizeof(T)); }
    template <typename T>
    T peek(uint64_t gpa) {
        T value;
        std::memcpy(&value, at(gpa), sizeof(T));
        return value;
    }
    void put(uint64_t gpa, std::span<const std::byte> bytes) { std::memcpy(at(gpa), bytes.data(), bytes.size()); }
    Frame bytes_at(uint64_t gpa, size_t len) { return {at(gpa), at(gpa) + len}; }
    Frame snapshot() { return {memory.all().begin(), memory.all().end()}; }
    bool needs_reset() { return (transport->status() & core::virtio::k_status_needs_reset) != 0; }
};

// One split queue as the driver sees it: where its three parts are, and the driver's indices.
struct Ring {
    uint16_t index;
    uint64_t desc, avail, used;
    uint16_t size = 16;
    uint16_t avail_idx = 0;
    uint16_t last_used = 0;
};

// What a driver does with any virtio-mmio device.
struct VirtioDriver {
    VirtioRig& rig;
    uint64_t features = 0;

    explicit VirtioDriver(VirtioRig& r) : rig(r) {}

    // Reset, ACKNOWLEDGE, DRIVER, features (offered & `accept`), FEATURES_OK; returns the status
    // the device shows afterwards.
    uint32_t negotiate(uint64_t accept) {
        using namespace core::virtio;
        rig.write(STATUS, 0);  // reset
        REQUIRE(rig.read(STATUS) == 0);
        rig.write(STATUS, k_status_acknowledge);
        rig.write(STATUS, k_status_acknowledge | k_status_driver);
        rig.write(DEV_FEATURES_SEL, 1);
        uint64_t offered = uint64_t{rig.read(DEV_FEATURES)} << 32;
        rig.write(DEV_FEATURES_SEL, 0);
        offered |= rig.read(DEV_FEATURES);
        features = offered & accept;
        rig.write(DRV_FEATURES_SEL, 1);
        rig.write(DRV_FEATURES, static_cast<uint32_t>(features >> 32));
        rig.write(DRV_FEATURES_SEL, 0);
        rig.write(DRV_FEATURES, static_cast<uint32_t>(features));
        rig.write(STATUS, k_status_acknowledge | k_status_driver | k_status_features_ok);
        return rig.read(STATUS);
    }
    void setup_queue(Ring& ring) {
        std::memset(rig.at(ring.desc), 0, 16 * ring.size);
        std::memset(rig.at(ring.avail), 0, 6 + 2 * ring.size);
        std::memset(rig.at(ring.used), 0, 6 + 8 * ring.size);
        rig.write(QUEUE_SEL, ring.index);
        REQUIRE(rig.read(QUEUE_READY) == 0);
        rig.write(QUEUE_NUM, ring.size);
        rig.write(DESC_LO, static_cast<uint32_t>(ring.desc));
        rig.write(DESC_HI, 0);
        rig.write(DRIVER_LO, static_cast<uint32_t>(ring.avail));
        rig.write(DRIVER_HI, 0);
        rig.write(DEVICE_LO, static_cast<uint32_t>(ring.used));
        rig.write(DEVICE_HI, 0);
        rig.write(QUEUE_READY, 1);
        REQUIRE(rig.read(QUEUE_READY) == 1);
        ring.avail_idx = 0;
        ring.last_used = 0;
    }
    // The whole probe: checks the device id, negotiates, sets up `rings`, DRIVER_OK.
    void start(uint32_t device_id, std::initializer_list<Ring*> rings, uint64_t accept) {
        using namespace core::virtio;
        REQUIRE(rig.read(DEVICE_ID) == device_id);
        REQUIRE((negotiate(accept) & k_status_features_ok) != 0);
        for (Ring* ring : rings)
            setup_queue(*ring);
        rig.write(STATUS, k_status_acknowledge | k_status_driver | k_status_features_ok | k_status_driver_ok);
        REQUIRE((rig.read(STATUS) & k_status_driver_ok) != 0);
    }

    void set_desc(uint64_t table, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
        uint64_t d = table + 16ull * index;
        rig.poke(d, addr);
        rig.poke(d + 8, len);
        rig.poke(d + 12, flags);
        rig.poke(d + 14, next);
    }
    void set_desc(Ring& ring, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
        set_desc(ring.desc, index, addr, len, flags, next);
    }
    // Makes chain `head` available (the index is published with release order, as a guest does).
    void post(Ring& ring, uint16_t head) {
        rig.poke<uint16_t>(ring.avail + 4 + 2 * (ring.avail_idx % ring.size), head);
        ++ring.avail_idx;
        __atomic_store_n(reinterpret_cast<uint16_t*>(rig.at(ring.avail + 2)), ring.avail_idx, __ATOMIC_RELEASE);
    }
    void kick(Ring& ring) { rig.write(QUEUE_NOTIFY, ring.index); }
    // The next used element, if the device returned one; with EVENT_IDX moves used_event along.
    std::optional<Used> get_used(Ring& ring) {
        uint16_t idx = __atomic_load_n(reinterpret_cast<uint16_t*>(rig.at(ring.used + 2)), __ATOMIC_ACQUIRE);
        if (idx == ring.last_used)
            return std::nullopt;
        uint64_t elem = ring.used + 4 + 8ull * (ring.last_used % ring.size);
        ++ring.last_used;
        if (features & core::virtio::k_feature_event_idx)
            __atomic_store_n(reinterpret_cast<uint16_t*>(rig.at(ring.avail + 4 + 2ull * ring.size)), ring.last_used,
                             __ATOMIC_RELAXED);
        return Used{rig.peek<uint32_t>(elem), rig.peek<uint32_t>(elem + 4)};
    }
    // Reads and acknowledges InterruptStatus.
    uint32_t interrupt() {
        uint32_t status = rig.read(INT_STATUS);
        rig.write(INT_ACK, status);
        return status;
    }
};

// virtio_net's side: receive queue 0 and transmit queue 1 at fixed places in low memory.
struct NetDriver : VirtioDriver {
    Ring rx{0, 0x10000, 0x11000, 0x12000};
    Ring tx{1, 0x20000, 0x21000, 0x22000};

    explicit NetDriver(VirtioRig& r) : VirtioDriver(r) {}

    void start(uint64_t accept = ~0ull) { VirtioDriver::start(core::virtio::NetDevice::k_device_id, {&rx, &tx}, accept); }

    // A receive buffer of `len` bytes at `gpa` in descriptor `head`, posted and kicked.
    void post_rx(uint16_t head, uint64_t gpa, uint32_t len, bool notify = true) {
        set_desc(rx, head, gpa, len, core::virtio::k_desc_f_write);
        post(rx, head);
        if (notify)
            kick(rx);
    }
    // Linux's layout for a frame (VERSION_1 implies ANY_LAYOUT): a zero header and the frame in
    // one readable buffer at `gpa`, chain `head`, posted and kicked.
    void send(uint16_t head, uint64_t gpa, std::span<const std::byte> frame, bool notify = true) {
        constexpr size_t header_size = core::virtio::NetDevice::k_header_size;
        rig.put(gpa, Frame(header_size, std::byte{0}));
        rig.put(gpa + header_size, frame);
        set_desc(tx, head, gpa, static_cast<uint32_t>(header_size + frame.size()), 0);
        post(tx, head);
        if (notify)
            kick(tx);
    }
};

// Doorbells rung as KVM rings them (a guest's write to QueueNotify signals the queue's
// eventfd): the test signals the eventfds a transport connected here. Must outlive the
// transport. `refuse` makes connect() fail for that queue, as a KVM without ioeventfds would.
struct TestDoorbells final : core::DoorbellWiring {
    std::map<uint32_t, int> connected;  // queue index -> eventfd
    std::optional<uint32_t> refuse;
    int disconnects = 0;

    base::Result<void> connect(uint64_t addr, uint32_t value, int fd) override {
        if (refuse == value)
            return base::Error(base::Errc::Unsupported, "refused by the test");
        CHECK(addr == k_base + QUEUE_NOTIFY);
        CHECK(connected.count(value) == 0);
        connected[value] = fd;
        return base::ok();
    }
    void disconnect(uint64_t addr, uint32_t value, int fd) override {
        CHECK(addr == k_base + QUEUE_NOTIFY);
        CHECK(connected.at(value) == fd);
        connected.erase(value);
        ++disconnects;
    }
    void ring(uint32_t queue) {
        uint64_t one = 1;
        REQUIRE(::write(connected.at(queue), &one, sizeof(one)) == sizeof(one));
    }
    // Waits until the transport's thread took the queue's ring (its eventfd reads empty).
    bool taken(uint32_t queue, std::chrono::seconds limit = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        pollfd p{connected.at(queue), POLLIN, 0};
        while (::poll(&p, 1, 0) == 1) {
            if (std::chrono::steady_clock::now() > deadline)
                return false;
            std::this_thread::yield();
        }
        return true;
    }
};

// Waits (bounded) until `done` holds, looking under the transport's lock, where a device's
// other threads write.
inline bool wait_under_lock(core::virtio::MmioTransport& transport, const std::function<bool()>& done,
                            std::chrono::seconds limit = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        {
            auto lock = transport.lock();
            if (done())
                return true;
        }
        if (std::chrono::steady_clock::now() > deadline)
            return false;
        std::this_thread::yield();
    }
}

// An Ethernet frame of `len` bytes, broadcast from `src`, of the local experimental EtherType
// 0x88b5 with a payload that depends on `seed`.
inline Frame make_frame(size_t len, uint8_t seed, core::net::Mac src = {0x02, 0, 0, 0, 0, 1}) {
    Frame f(len);
    for (size_t i = 0; i < 6 && i < len; ++i)
        f[i] = std::byte{0xff};
    for (size_t i = 0; i < 6 && 6 + i < len; ++i)
        f[6 + i] = std::byte{src[i]};
    if (len > 13) {
        f[12] = std::byte{0x88};
        f[13] = std::byte{0xb5};
    }
    for (size_t i = 14; i < len; ++i)
        f[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
    return f;
}

// An ARP request from `mac` claiming `sender` and asking for `target` (host byte order): what
// Linux sends to resolve a neighbour.
inline Frame arp_request(core::net::Mac mac, uint32_t sender, uint32_t target) {
    Frame f = core::net::gratuitous_arp(mac, sender);
    for (int i = 0; i < 4; ++i)
        f[38 + static_cast<size_t>(i)] = std::byte(static_cast<uint8_t>(target >> (24 - 8 * i)));
    return f;
}

}  // namespace colod::test
