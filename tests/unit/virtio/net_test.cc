// SPDX-License-Identifier: GPL-2.0-or-later
// virtio-mmio + virtio-net driven by a fake driver that does what Linux's virtio_mmio,
// virtio_ring and virtio_net do, in guest memory without KVM.
#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/net/frames.h"
#include "core/replication.h"
#include "core/state_io.h"
#include "core/virtio/mmio.h"
#include "core/virtio/net.h"
#include "proto/state.h"
#include "tests/support/frame_builder.h"
#include "tests/support/virtio_driver.h"

using namespace colod;
using namespace colod::core;
using namespace colod::core::virtio;
using namespace colod::test;

namespace {

constexpr NetDevice::Mac k_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr size_t k_hdr = NetDevice::k_header_size;

// An IPv4 packet (just its header) from the guest's MAC with source `ip`.
Frame ipv4_frame(uint32_t ip, NetDevice::Mac src = k_mac) {
    Frame f = make_frame(14 + 20, 0, src);
    f[12] = std::byte{0x08};
    f[13] = std::byte{0x00};
    std::fill(f.begin() + 14, f.end(), std::byte{0});
    f[14] = std::byte{0x45};
    for (int i = 0; i < 4; ++i)
        f[14 + 12 + i] = std::byte(static_cast<uint8_t>(ip >> (24 - 8 * i)));
    return f;
}

// A virtio-net device behind the transport whose sink records what it takes.
struct Rig : VirtioRig {
    std::vector<Frame> sent;
    bool accept = true;
    int refused = 0;
    NetDevice* net = nullptr;

    Rig() {
        auto device = std::make_unique<NetDevice>(k_mac, [this](std::span<const std::byte> frame) {
            if (!accept) {
                ++refused;
                return false;
            }
            sent.emplace_back(frame.begin(), frame.end());
            return true;
        });
        net = device.get();
        attach(std::move(device));
    }
};

// What the device writes of a ring: the used ring, avail_event included.
std::pair<uint64_t, uint64_t> ring_fields(const Ring& ring) { return {ring.used, 6 + 8ull * ring.size}; }
// What the fake driver's get_used() writes with EVENT_IDX.
std::pair<uint64_t, uint64_t> used_event(const Ring& ring) { return {ring.avail + 4 + 2ull * ring.size, 2}; }

// What the device writes before a received frame: a zero header but num_buffers = 1.
Frame rx_header() {
    Frame h(k_hdr, std::byte{0});
    h[10] = std::byte{1};
    return h;
}

Frame concat(const Frame& a, const Frame& b) {
    Frame out = a;
    out.insert(out.end(), b.begin(), b.end());
    return out;
}

bool unchanged_outside(Rig& rig, const Frame& before, std::vector<std::pair<uint64_t, uint64_t>> allowed) {
    auto now = rig.memory.all();
    for (size_t i = 0; i < now.size(); ++i) {
        if (now[i] == before[i])
            continue;
        bool ok = false;
        for (auto [first, len] : allowed)
            ok = ok || (i >= first && i < first + len);
        if (!ok) {
            UNSCOPED_INFO("changed at " << std::hex << i);
            return false;
        }
    }
    return true;
}

// A virtio-net state as save_state() writes it: the address, `count` (the frames' number
// unless given), and each frame with its length in front.
// `companion`: the companion's bytes at the end (none: the state stops after the backlog).
std::vector<std::byte> net_state(uint32_t ipv4, const std::vector<Frame>& frames, std::optional<uint32_t> count = {},
                                 const std::optional<std::vector<std::byte>>& companion = std::vector<std::byte>{}) {
    StateWriter w;
    w.put(ipv4);
    w.put(count.value_or(static_cast<uint32_t>(frames.size())));
    for (const auto& f : frames) {
        w.put_bytes(std::array<std::byte, NetDevice::k_header_size>{});  // nothing left to do on it
        w.put_blob(f);
    }
    if (companion)
        w.put_blob(*companion);
    return w.take();
}

// A companion that keeps what it was given, refuses a first byte of 0xff, and saves `saved`.
struct TestCompanion : NetDevice::Companion {
    std::vector<std::byte> saved, loaded;
    int loads = 0;
    std::vector<std::byte> save_companion() const override { return saved; }
    base::Result<void> check_companion(std::span<const std::byte> bytes) const override {
        if (!bytes.empty() && bytes[0] == std::byte{0xff})
            return base::Error(base::Errc::Invalid, "companion: refused");
        return base::ok();
    }
    void load_companion(std::span<const std::byte> bytes) override {
        loaded.assign(bytes.begin(), bytes.end());
        ++loads;
    }
};

// The secondary's side of a checkpoint: the primary's `memory` copied into `standby`, and a
// driver that continues where the primary's `driver` was.
NetDriver continue_on(Rig& standby, const Frame& memory, const NetDriver& driver) {
    REQUIRE(memory.size() == k_ram);
    std::memcpy(standby.memory.all().data(), memory.data(), k_ram);
    NetDriver continued(standby);
    continued.features = driver.features;
    continued.rx = driver.rx;
    continued.tx = driver.tx;
    return continued;
}

}  // namespace

TEST_CASE("virtio-net identifies itself, offers MAC, STATUS and the receive offloads and shows its MAC with the link up") {
    Rig rig;
    CHECK(rig.transport->name() == "virtio-net@d0000000");
    CHECK(rig.read(MAGIC) == 0x74726976);
    CHECK(rig.read(VERSION) == 2);
    CHECK(rig.read(DEVICE_ID) == 1);
    NetDriver driver(rig);
    uint32_t status = driver.negotiate(~0ull);
    CHECK(status == (k_status_acknowledge | k_status_driver | k_status_features_ok));
    CHECK(driver.features == (NetDevice::k_features | k_feature_version_1 | k_feature_indirect_desc | k_feature_event_idx));
    for (uint32_t q : {0u, 1u}) {
        rig.write(QUEUE_SEL, q);
        CHECK(rig.read(QUEUE_NUM_MAX) == NetDevice::k_queue_size);
    }
    rig.write(QUEUE_SEL, 2);
    CHECK(rig.read(QUEUE_NUM_MAX) == 0);  // no control queue

    // Configuration space, the way Linux reads it: byte by byte for the MAC, 16 bits for status.
    for (uint32_t i = 0; i < 6; ++i) {
        uint8_t b = 0;
        rig.transport->mmio_read(k_base + CONFIG + i, std::as_writable_bytes(std::span(&b, 1)));
        CHECK(b == k_mac[i]);
    }
    uint16_t link = 0;
    rig.transport->mmio_read(k_base + CONFIG + 6, std::as_writable_bytes(std::span(&link, 1)));
    CHECK(link == NetDevice::k_status_link_up);
    CHECK(rig.read(CONFIG + 4) == (0x56u << 8 | 0x34u | 1u << 16));
    CHECK(rig.read(CONFIG + 8) == 0);  // nothing beyond status
    CHECK(rig.read(CONFIG + 0x80) == 0);
    // Writes are ignored: the MAC stays.
    uint8_t other = 0x02;
    rig.transport->mmio_write(k_base + CONFIG, std::as_bytes(std::span(&other, 1)));
    CHECK(rig.read(CONFIG) == (0x52u | 0x54u << 8 | 0x00u << 16 | 0x12u << 24));
    CHECK(rig.net->mac() == k_mac);
    CHECK(rig.net->learned_ipv4() == 0);
}

TEST_CASE("frames the guest sends reach the sink without the header, in order, whatever the chain's layout") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    std::vector<Frame> frames;
    for (uint8_t i = 0; i < 5; ++i)
        frames.push_back(make_frame(60 + 300u * i, i));
    // 0: header and frame in one buffer (Linux with ANY_LAYOUT).
    driver.send(0, 0x30000, frames[0], false);
    // 1: header alone, then the frame (a driver without ANY_LAYOUT).
    rig.put(0x31000, Frame(k_hdr, std::byte{0}));
    rig.put(0x31100, frames[1]);
    driver.set_desc(driver.tx, 1, 0x31000, k_hdr, k_desc_f_next, 2);
    driver.set_desc(driver.tx, 2, 0x31100, static_cast<uint32_t>(frames[1].size()), 0);
    driver.post(driver.tx, 1);
    // 3: the header split across buffers and the frame across three.
    Frame whole = concat(Frame(k_hdr, std::byte{0}), frames[2]);
    rig.put(0x32000, std::span(whole).first(5));
    rig.put(0x32100, std::span(whole).subspan(5, 10));
    rig.put(0x32200, std::span(whole).subspan(15, 100));
    rig.put(0x32400, std::span(whole).subspan(115));
    driver.set_desc(driver.tx, 3, 0x32000, 5, k_desc_f_next, 4);
    driver.set_desc(driver.tx, 4, 0x32100, 10, k_desc_f_next, 5);
    driver.set_desc(driver.tx, 5, 0x32200, 100, k_desc_f_next, 6);
    driver.set_desc(driver.tx, 6, 0x32400, static_cast<uint32_t>(whole.size() - 115), 0);
    driver.post(driver.tx, 3);
    // 7: an indirect table of header and frame.
    rig.put(0x33000, Frame(k_hdr, std::byte{0}));
    rig.put(0x33100, frames[3]);
    driver.set_desc(0x34000, 0, 0x33000, k_hdr, k_desc_f_next, 1);
    driver.set_desc(0x34000, 1, 0x33100, static_cast<uint32_t>(frames[3].size()), 0, 0);
    driver.set_desc(driver.tx, 7, 0x34000, 32, k_desc_f_indirect);
    driver.post(driver.tx, 7);
    // 8: a header the driver filled with something (ignored: nothing was negotiated for it).
    Frame noisy_header(k_hdr, std::byte{0x5a});
    rig.put(0x35000, noisy_header);
    rig.put(0x35000 + k_hdr, frames[4]);
    driver.set_desc(driver.tx, 8, 0x35000, static_cast<uint32_t>(k_hdr + frames[4].size()), 0);
    driver.post(driver.tx, 8);
    auto before = rig.snapshot();
    driver.kick(driver.tx);

    CHECK(rig.sent == frames);
    for (uint32_t head : {0u, 1u, 3u, 7u, 8u})
        CHECK(driver.get_used(driver.tx) == Used{head, 0});
    CHECK(!driver.get_used(driver.tx));
    // Nothing written but the transmit queue's used ring (and its avail_event).
    CHECK(unchanged_outside(rig, before, {ring_fields(driver.tx), used_event(driver.tx)}));
    CHECK(rig.line_changes == std::vector<bool>{true});
    CHECK(driver.interrupt() == k_interrupt_used);
    auto counters = rig.net->counters();
    CHECK(counters.tx_frames == 5);
    uint64_t bytes = 0;
    for (auto& f : frames)
        bytes += f.size();
    CHECK(counters.tx_bytes == bytes);
    CHECK(counters.bad_chains == 0);
    CHECK(!rig.needs_reset());
}

TEST_CASE("a sink that refuses a frame leaves its chain in the ring until tx_ready()") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    rig.accept = false;
    auto a = make_frame(100, 1), b = make_frame(200, 2);
    driver.send(0, 0x30000, a);
    CHECK(rig.refused == 1);
    CHECK(!driver.get_used(driver.tx));
    CHECK(rig.line_changes.empty());
    // More kicks do not ask the sink again before it said it is ready.
    driver.send(1, 0x31000, b);
    CHECK(rig.refused == 1);
    CHECK(!driver.get_used(driver.tx));
    rig.net->tx_ready();  // still refusing: asked once more, for the first frame
    CHECK(rig.refused == 2);
    CHECK(rig.sent.empty());

    rig.accept = true;
    rig.net->tx_ready();
    CHECK(rig.sent == std::vector<Frame>{a, b});
    CHECK(driver.get_used(driver.tx) == Used{0, 0});
    CHECK(driver.get_used(driver.tx) == Used{1, 0});
    CHECK(rig.line_changes == std::vector<bool>{true});
    CHECK(rig.net->counters().tx_frames == 2);
}

TEST_CASE("without a sink frames wait in the ring until set_transmit()") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    rig.net->set_transmit({});
    auto a = make_frame(80, 3);
    driver.send(0, 0x30000, a);
    CHECK(!driver.get_used(driver.tx));
    std::vector<Frame> got;
    rig.net->set_transmit([&](std::span<const std::byte> frame) {
        got.emplace_back(frame.begin(), frame.end());
        return true;
    });
    CHECK(got == std::vector<Frame>{a});
    CHECK(driver.get_used(driver.tx) == Used{0, 0});
    CHECK(rig.sent.empty());
}

TEST_CASE("frames received go into posted buffers behind a zeroed header with num_buffers 1") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    SECTION("one buffer per chain, as Linux posts them") {
        driver.post_rx(0, 0x40000, 1526);
        driver.post_rx(1, 0x41000, 1526);
        auto before = rig.snapshot();
        auto a = make_frame(60, 1), b = make_frame(1514, 2);
        CHECK(rig.net->receive(a));
        CHECK(rig.net->receive(b));
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 60});
        CHECK(driver.get_used(driver.rx) == Used{1, k_hdr + 1514});
        CHECK(rig.bytes_at(0x40000, k_hdr + 60) == concat(rx_header(), a));
        CHECK(rig.bytes_at(0x41000, k_hdr + 1514) == concat(rx_header(), b));
        CHECK(rig.peek<uint8_t>(0x40000 + k_hdr + 60) == 0xaa);  // nothing beyond the frame
        CHECK(unchanged_outside(rig, before,
                                {{0x40000, k_hdr + 60}, {0x41000, k_hdr + 1514}, ring_fields(driver.rx), used_event(driver.rx)}));
        // One interrupt: the driver had not acknowledged it, nor moved used_event, before the second.
        CHECK(rig.line_changes == std::vector<bool>{true});
        auto counters = rig.net->counters();
        CHECK(counters.rx_frames == 2);
        CHECK(counters.rx_bytes == 60 + 1514);
        CHECK(counters.rx_dropped == 0);
    }
    SECTION("header and frame across several buffers") {
        driver.set_desc(driver.rx, 0, 0x40000, 5, k_desc_f_write | k_desc_f_next, 1);
        driver.set_desc(driver.rx, 1, 0x40100, 20, k_desc_f_write | k_desc_f_next, 2);
        driver.set_desc(driver.rx, 2, 0x40200, 2000, k_desc_f_write);
        driver.post(driver.rx, 0);
        driver.kick(driver.rx);
        auto a = make_frame(100, 9);
        CHECK(rig.net->receive(a));
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 100});
        Frame whole = concat(rx_header(), a);
        CHECK(rig.bytes_at(0x40000, 5) == Frame(whole.begin(), whole.begin() + 5));
        CHECK(rig.bytes_at(0x40100, 20) == Frame(whole.begin() + 5, whole.begin() + 25));
        CHECK(rig.bytes_at(0x40200, whole.size() - 25) == Frame(whole.begin() + 25, whole.end()));
        CHECK(rig.peek<uint8_t>(0x40200 + whole.size() - 25) == 0xaa);
    }
    SECTION("something that is no Ethernet frame is dropped") {
        driver.post_rx(0, 0x40000, 1526);
        CHECK_FALSE(rig.net->receive(make_frame(13, 0)));
        CHECK_FALSE(rig.net->receive(make_frame(NetDevice::k_max_frame + 1, 0)));
        CHECK(!driver.get_used(driver.rx));
        CHECK(rig.net->counters().rx_dropped == 2);
    }
}

TEST_CASE("without receive buffers frames wait in the backlog and arrive in order when buffers come") {
    Rig rig;
    NetDriver driver(rig);
    std::vector<Frame> frames;
    for (uint8_t i = 0; i < 4; ++i)
        frames.push_back(make_frame(64 + i, i));
    SECTION("before the driver is up") {
        CHECK(rig.net->receive(frames[0]));
        CHECK(rig.net->receive(frames[1]));
        CHECK(rig.net->rx_backlog() == 2);
        driver.start();
        driver.post_rx(0, 0x40000, 1526);
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 64});
        CHECK(rig.bytes_at(0x40000 + k_hdr, 64) == frames[0]);
        CHECK(rig.net->rx_backlog() == 1);
    }
    SECTION("with the driver up but no buffer posted") {
        driver.start();
        for (auto& f : frames)
            CHECK(rig.net->receive(f));
        CHECK(rig.net->rx_backlog() == 4);
        CHECK(rig.line_changes.empty());
        // The device asked to be notified of the next buffer (EVENT_IDX: avail_event).
        CHECK(rig.peek<uint16_t>(driver.rx.used + 4 + 8 * driver.rx.size) == 0);
        driver.post_rx(0, 0x40000, 1526, false);
        driver.post_rx(1, 0x41000, 1526, false);
        driver.kick(driver.rx);
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 64});
        CHECK(driver.get_used(driver.rx) == Used{1, k_hdr + 65});
        CHECK(!driver.get_used(driver.rx));
        CHECK(rig.net->rx_backlog() == 2);
        CHECK(rig.peek<uint16_t>(driver.rx.used + 4 + 8 * driver.rx.size) == 2);
        // A frame received now waits behind the backlog: order is kept.
        auto late = make_frame(300, 77);
        CHECK(rig.net->receive(late));
        driver.post_rx(2, 0x42000, 1526);
        driver.post_rx(3, 0x43000, 1526);
        driver.post_rx(4, 0x44000, 1526);
        CHECK(rig.bytes_at(0x42000 + k_hdr, 66) == frames[2]);
        CHECK(rig.bytes_at(0x43000 + k_hdr, 67) == frames[3]);
        CHECK(rig.bytes_at(0x44000 + k_hdr, 300) == late);
        CHECK(rig.net->rx_backlog() == 0);
        CHECK(rig.net->counters().rx_frames == 5);
    }
}

TEST_CASE("the receive backlog is bounded; beyond it frames are dropped and counted") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    auto f = make_frame(100, 1);
    for (size_t i = 0; i < NetDevice::k_rx_backlog; ++i)
        REQUIRE(rig.net->receive(f));
    for (int i = 0; i < 5; ++i)
        CHECK_FALSE(rig.net->receive(f));
    CHECK(rig.net->rx_backlog() == NetDevice::k_rx_backlog);
    CHECK(rig.net->counters().rx_dropped == 5);
    SECTION("a device reset keeps the backlog; buffers posted afterwards take it") {
        driver.start();
        CHECK(rig.net->rx_backlog() == NetDevice::k_rx_backlog);
        driver.post_rx(0, 0x40000, 1526);
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 100});
        CHECK(rig.net->rx_backlog() == NetDevice::k_rx_backlog - 1);
    }
    SECTION("big frames are bounded by bytes too") {
        Rig other;
        auto big = make_frame(NetDevice::k_max_frame, 2);
        size_t fit = NetDevice::k_rx_backlog_bytes / big.size();
        for (size_t i = 0; i < fit; ++i)
            REQUIRE(other.net->receive(big));
        CHECK_FALSE(other.net->receive(big));
        CHECK(other.net->rx_backlog() == fit);
    }
}

TEST_CASE("while quiesced nothing reaches guest memory or the sink; resume() delivers and sends") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.post_rx(0, 0x40000, 1526);
    rig.transport->quiesce();
    auto before = rig.snapshot();
    auto in = make_frame(90, 5), out = make_frame(70, 6);
    CHECK(rig.net->receive(in));  // waits
    driver.send(0, 0x30000, out);  // the kick comes from a stray caller: vCPUs are paused
    CHECK(rig.sent.empty());
    CHECK(rig.line_changes.empty());
    // Only the driver's own writes (the transmit chain and its ring) changed memory.
    CHECK(unchanged_outside(rig, before, {{0x30000, k_hdr + 70}, {driver.tx.desc, 16}, {driver.tx.avail, 6 + 2 * 16}}));
    CHECK(rig.net->rx_backlog() == 1);
    rig.net->tx_ready();  // a sink saying it is ready does not bypass the pause either
    CHECK(rig.sent.empty());

    rig.transport->resume();
    CHECK(rig.sent == std::vector<Frame>{out});
    CHECK(driver.get_used(driver.tx) == Used{0, 0});
    CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 90});
    CHECK(rig.bytes_at(0x40000 + k_hdr, 90) == in);
    CHECK(rig.line);
}

TEST_CASE("malformed transmit chains break the queue; a frame too short for Ethernet is returned unsent") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    auto frame = make_frame(100, 1);
    bool breaks = true;
    SECTION("a device-writable buffer") {
        rig.put(0x30000, concat(Frame(k_hdr, std::byte{0}), frame));
        driver.set_desc(driver.tx, 0, 0x30000, k_hdr + 100, k_desc_f_next, 1);
        driver.set_desc(driver.tx, 1, 0x31000, 64, k_desc_f_write);
        driver.post(driver.tx, 0);
    }
    SECTION("shorter than the header") {
        driver.set_desc(driver.tx, 0, 0x30000, k_hdr - 1, 0);
        driver.post(driver.tx, 0);
    }
    SECTION("a frame beyond 65550 bytes") {
        driver.set_desc(driver.tx, 0, 0x100000, k_hdr + NetDevice::k_max_frame + 1, 0);
        driver.post(driver.tx, 0);
    }
    SECTION("a descriptor loop") {
        driver.set_desc(driver.tx, 0, 0x30000, 64, k_desc_f_next, 1);
        driver.set_desc(driver.tx, 1, 0x30100, 64, k_desc_f_next, 0);
        driver.post(driver.tx, 0);
    }
    SECTION("a buffer outside RAM") {
        driver.set_desc(driver.tx, 0, 0x8000'0000, 64, 0);
        driver.post(driver.tx, 0);
    }
    SECTION("a header with 10 bytes of frame, or none") {
        breaks = false;
        driver.set_desc(driver.tx, 0, 0x30000, k_hdr + 10, 0);
        driver.post(driver.tx, 0);
        driver.set_desc(driver.tx, 1, 0x30000, k_hdr, 0);
        driver.post(driver.tx, 1);
        driver.send(2, 0x31000, frame, false);  // and a good one after them
    }
    auto before = rig.snapshot();
    driver.kick(driver.tx);
    if (breaks) {
        CHECK(rig.needs_reset());
        CHECK(rig.sent.empty());
        CHECK(!driver.get_used(driver.tx));
        CHECK(unchanged_outside(rig, before, {}));
        CHECK(driver.interrupt() == k_interrupt_config);
        // It works again after the driver resets it.
        driver.start();
        driver.send(0, 0x30000, frame);
        CHECK(rig.sent == std::vector<Frame>{frame});
    } else {
        CHECK(!rig.needs_reset());
        CHECK(driver.get_used(driver.tx) == Used{0, 0});
        CHECK(driver.get_used(driver.tx) == Used{1, 0});
        CHECK(driver.get_used(driver.tx) == Used{2, 0});
        CHECK(rig.sent == std::vector<Frame>{frame});
        CHECK(rig.net->counters().bad_chains == 2);
        CHECK(rig.net->counters().tx_frames == 1);
    }
}

TEST_CASE("malformed receive chains: a readable buffer breaks the queue, a small one loses its frame") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    auto a = make_frame(1000, 1), b = make_frame(200, 2);
    SECTION("a device-readable buffer") {
        driver.set_desc(driver.rx, 0, 0x40000, 64, k_desc_f_next, 1);
        driver.set_desc(driver.rx, 1, 0x40100, 1526, k_desc_f_write);
        driver.post(driver.rx, 0);
        driver.kick(driver.rx);
        auto before = rig.snapshot();
        CHECK_FALSE(rig.net->receive(a));
        CHECK(rig.needs_reset());
        CHECK(!driver.get_used(driver.rx));
        CHECK(unchanged_outside(rig, before, {}));
        CHECK(rig.net->counters().bad_chains == 1);
        CHECK(rig.net->counters().rx_dropped == 1);
        // Frames wait until the driver has reset the device and posted buffers again.
        CHECK(rig.net->receive(b));
        CHECK(rig.net->rx_backlog() == 1);
        driver.start();
        CHECK(rig.net->rx_backlog() == 1);
        driver.post_rx(0, 0x40000, 1526);
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 200});
        CHECK(rig.bytes_at(0x40000 + k_hdr, 200) == b);
    }
    SECTION("a chain too small for header and frame is returned empty; the next frame goes on") {
        driver.post_rx(0, 0x40000, 500);
        driver.post_rx(1, 0x41000, 1526);
        auto before = rig.snapshot();
        CHECK_FALSE(rig.net->receive(a));
        CHECK(rig.net->receive(b));
        CHECK(driver.get_used(driver.rx) == Used{0, 0});
        CHECK(driver.get_used(driver.rx) == Used{1, k_hdr + 200});
        CHECK(rig.bytes_at(0x41000 + k_hdr, 200) == b);
        CHECK(unchanged_outside(rig, before, {{0x41000, k_hdr + 200}, ring_fields(driver.rx), used_event(driver.rx)}));
        CHECK(!rig.needs_reset());
        auto counters = rig.net->counters();
        CHECK(counters.rx_dropped == 1);
        CHECK(counters.bad_chains == 1);
        CHECK(counters.rx_frames == 1);
    }
    SECTION("a chain exactly the size of header and frame is enough") {
        driver.post_rx(0, 0x40000, static_cast<uint32_t>(k_hdr + a.size()));
        CHECK(rig.net->receive(a));
        CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 1000});
    }
}

TEST_CASE("interrupt suppression on both queues: used_event with EVENT_IDX, NO_INTERRUPT without") {
    Rig rig;
    NetDriver driver(rig);
    SECTION("EVENT_IDX") {
        driver.start();
        // Interrupt only after the 3rd used receive buffer (used_event = 2).
        rig.poke<uint16_t>(driver.rx.avail + 4 + 2 * driver.rx.size, 2);
        for (uint16_t i = 0; i < 3; ++i)
            driver.post_rx(i, 0x40000 + 0x1000 * i, 1526);
        CHECK(rig.net->receive(make_frame(60, 0)));
        CHECK(rig.net->receive(make_frame(60, 1)));
        CHECK(rig.line_changes.empty());
        CHECK(rig.net->receive(make_frame(60, 2)));
        CHECK(rig.line_changes == std::vector<bool>{true});
    }
    SECTION("VIRTQ_AVAIL_F_NO_INTERRUPT") {
        driver.start(~k_feature_event_idx);
        rig.poke<uint16_t>(driver.tx.avail, k_avail_f_no_interrupt);
        driver.send(0, 0x30000, make_frame(60, 0));
        CHECK(driver.get_used(driver.tx));
        CHECK(rig.line_changes.empty());
        rig.poke<uint16_t>(driver.tx.avail, 0);
        driver.send(1, 0x31000, make_frame(60, 0));
        CHECK(rig.line_changes == std::vector<bool>{true});
    }
}

TEST_CASE("the guest's IPv4 address is learned from what it sends: ARP first, else IPv4 sources") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    uint16_t head = 0;
    auto send = [&](const Frame& f) {
        driver.send(head, 0x30000 + 0x1000ull * head, f);
        REQUIRE(driver.get_used(driver.tx));
        head = static_cast<uint16_t>((head + 1) % driver.tx.size);
    };
    send(make_frame(60, 0));
    CHECK(rig.net->learned_ipv4() == 0);
    send(ipv4_frame(0x00000000));  // DHCP discover: no address yet
    CHECK(rig.net->learned_ipv4() == 0);
    send(ipv4_frame(0xc0a80a05, {0x02, 0, 0, 0, 0, 9}));  // not from its MAC
    CHECK(rig.net->learned_ipv4() == 0);
    send(ipv4_frame(0xc0a80a05));
    CHECK(rig.net->learned_ipv4() == 0xc0a80a05);
    send(ipv4_frame(0x0a000001));  // an IPv4 source does not replace a known address
    CHECK(rig.net->learned_ipv4() == 0xc0a80a05);
    send(arp_request(k_mac, 0, 0xc0a80a07));  // an ARP probe (RFC 5227): sender 0.0.0.0
    CHECK(rig.net->learned_ipv4() == 0xc0a80a05);
    send(arp_request(k_mac, 0xc0a80a07, 0xc0a80a01));  // ARP is authoritative
    CHECK(rig.net->learned_ipv4() == 0xc0a80a07);
    send(ipv4_frame(0xc0a80a05));
    CHECK(rig.net->learned_ipv4() == 0xc0a80a07);
    // A refused frame teaches nothing until it is taken.
    rig.accept = false;
    driver.send(head, 0x50000, arp_request(k_mac, 0xc0a80a08, 0xc0a80a01));
    CHECK(rig.net->learned_ipv4() == 0xc0a80a07);
    rig.accept = true;
    rig.net->tx_ready();
    CHECK(rig.net->learned_ipv4() == 0xc0a80a08);
}

TEST_CASE("virtio-net state: save, load, save is identical and carries the learned address") {
    Rig rig;
    DeviceState power_on = rig.transport->save_state();
    NetDriver driver(rig);
    driver.start();
    driver.send(0, 0x30000, arp_request(k_mac, 0xc0a80a07, 0xc0a80a01));
    driver.post_rx(0, 0x40000, 1526);
    REQUIRE(rig.net->learned_ipv4() == 0xc0a80a07);
    DeviceState saved = rig.transport->save_state();
    CHECK(saved.name == "virtio-net@d0000000");
    REQUIRE(rig.transport->check_state(saved));
    REQUIRE(rig.transport->load_state(saved));
    CHECK(rig.transport->save_state().bytes == saved.bytes);
    // The address, then an empty backlog, then no companion state.
    CHECK(rig.net->save_state() == std::vector<std::byte>{std::byte{0xc0}, std::byte{0xa8}, std::byte{0x0a},
                                                          std::byte{0x07}, std::byte{0}, std::byte{0}, std::byte{0},
                                                          std::byte{0}, std::byte{0}, std::byte{0}, std::byte{0},
                                                          std::byte{0}});

    // A secondary: its own memory (a copy), its own transport, loaded again and again.
    Rig standby;
    std::memcpy(standby.memory.all().data(), rig.memory.all().data(), k_ram);
    REQUIRE(standby.transport->load_state(saved));
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.transport->save_state().bytes == saved.bytes);
    CHECK(standby.net->learned_ipv4() == 0xc0a80a07);
    // Its guest's posted buffer takes a frame where the primary's left off.
    NetDriver continued(standby);
    continued.features = driver.features;
    continued.rx = driver.rx;
    continued.tx = driver.tx;
    auto f = make_frame(80, 4);
    CHECK(standby.net->receive(f));
    CHECK(continued.get_used(continued.rx) == Used{0, k_hdr + 80});
    CHECK(standby.bytes_at(0x40000 + k_hdr, 80) == f);
    // The power-on state forgets the address (a reboot in place).
    REQUIRE(standby.transport->load_state(power_on));
    CHECK(standby.net->learned_ipv4() == 0);
}

TEST_CASE("virtio-net check_state and load_state refuse bad blobs and change nothing") {
    NetDevice net(k_mac, {});
    auto blob = [](std::initializer_list<uint8_t> bytes) {
        std::vector<std::byte> out;
        for (uint8_t b : bytes)
            out.push_back(std::byte{b});
        return out;
    };
    constexpr uint16_t v = NetDevice::k_state_version;
    auto good = blob({10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0});
    REQUIRE(net.load_state(v, good));
    REQUIRE(net.learned_ipv4() == 0x0a000005);
    auto refused = [&](uint16_t version, const std::vector<std::byte>& bytes) {
        bool check_refused = !net.check_state(version, bytes).ok();
        bool load_refused = !net.load_state(version, bytes).ok();
        return check_refused && load_refused && net.learned_ipv4() == 0x0a000005;
    };
    CHECK(refused(v + 1, good));                        // another version
    CHECK(refused(0, good));
    CHECK(refused(v, blob({})));                        // truncated
    CHECK(refused(v, blob({10, 0, 0})));
    CHECK(refused(v, blob({10, 0, 0, 5})));
    CHECK(refused(v, blob({10, 0, 0, 5, 0, 0, 0})));
    CHECK(refused(v, blob({10, 0, 0, 5, 0, 0, 0, 0, 0})));  // trailing bytes
    CHECK(refused(v, blob({224, 0, 0, 1, 0, 0, 0, 0})));   // no host's address
    CHECK(refused(v, blob({127, 0, 0, 1, 0, 0, 0, 0})));
    CHECK(refused(v, blob({255, 255, 255, 255, 0, 0, 0, 0})));
    auto version = net.check_state(v + 1, good);
    REQUIRE_FALSE(version);
    CHECK(version.error().code() == base::Errc::Unsupported);
    REQUIRE(net.load_state(v, blob({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})));
    CHECK(net.learned_ipv4() == 0);

    // Through the transport: every truncation of a good state is refused.
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.send(0, 0x30000, arp_request(k_mac, 0xc0a80a07, 0xc0a80a01));
    DeviceState state = rig.transport->save_state();
    Rig other;
    DeviceState before = other.transport->save_state();
    for (size_t len = 0; len < state.bytes.size(); ++len) {
        DeviceState cut = state;
        cut.bytes.resize(len);
        INFO("truncated to " << len);
        CHECK(!other.transport->check_state(cut).ok());
        CHECK(!other.transport->load_state(cut).ok());
        CHECK(other.transport->save_state().bytes == before.bytes);
    }
    // A garbled address in the model's blob (its last eight bytes: address, empty backlog).
    DeviceState garbled = state;
    garbled.bytes[garbled.bytes.size() - 8] = std::byte{240};
    CHECK(!other.transport->load_state(garbled).ok());
    CHECK(other.transport->save_state().bytes == before.bytes);
    REQUIRE(other.transport->load_state(state));
    CHECK(other.net->learned_ipv4() == 0xc0a80a07);
}

TEST_CASE("a frame backlogged without a receive buffer is saved, and the device that loads it gives it to its guest") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    auto a = make_frame(200, 11), b = make_frame(1514, 12);
    REQUIRE(rig.net->receive(a));  // no receive buffer posted: both wait
    REQUIRE(rig.net->receive(b));
    REQUIRE(rig.net->rx_backlog() == 2);
    // A checkpoint: the device quiesced, its state and the guest's memory captured together.
    rig.transport->quiesce();
    DeviceState saved = rig.transport->save_state();
    Frame memory = rig.snapshot();
    rig.transport->resume();
    CHECK(rig.net->rx_backlog() == 2);
    CHECK(rig.net->save_state() == net_state(0, {a, b}));

    // Another device, whose own backlog is full by bytes (frames for a guest that ran
    // elsewhere): loading replaces it, frames and byte count.
    Rig standby;
    auto big = make_frame(NetDevice::k_max_frame, 3);
    size_t fit = NetDevice::k_rx_backlog_bytes / big.size();
    for (size_t i = 0; i < fit; ++i)
        REQUIRE(standby.net->receive(big));
    REQUIRE_FALSE(standby.net->receive(big));
    NetDriver continued = continue_on(standby, memory, driver);
    standby.transport->quiesce();
    REQUIRE(standby.transport->check_state(saved));
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.transport->save_state().bytes == saved.bytes);
    standby.transport->resume();
    CHECK(standby.net->rx_backlog() == 2);  // still no buffer: they wait, as on the primary
    CHECK(!continued.get_used(continued.rx));

    // The guest posts buffers: the primary's frames arrive, in order, as frames that queued here would.
    continued.post_rx(0, 0x40000, 1526);
    CHECK(continued.get_used(continued.rx) == Used{0, k_hdr + 200});
    CHECK(standby.bytes_at(0x40000, k_hdr + 200) == concat(rx_header(), a));
    CHECK(standby.net->rx_backlog() == 1);
    continued.post_rx(1, 0x41000, 1526);
    CHECK(continued.get_used(continued.rx) == Used{1, k_hdr + 1514});
    CHECK(standby.bytes_at(0x41000, k_hdr + 1514) == concat(rx_header(), b));
    CHECK(!continued.get_used(continued.rx));
    CHECK(standby.net->rx_backlog() == 0);
    CHECK(standby.line);
    CHECK(standby.net->counters().rx_frames == 2);
    // The byte count came with the frames: a full backlog's worth of big frames fits again.
    for (size_t i = 0; i < fit; ++i)
        REQUIRE(standby.net->receive(big));
    CHECK_FALSE(standby.net->receive(big));
}

TEST_CASE("a backlog loaded with the state goes to the guest before the next frame, even without resume()") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.post_rx(0, 0x40000, 1526);
    driver.post_rx(1, 0x41000, 1526);
    auto a = make_frame(300, 21), b = make_frame(400, 22);
    rig.transport->quiesce();
    REQUIRE(rig.net->receive(a));  // waits: the device is quiesced, though buffers are posted
    DeviceState saved = rig.transport->save_state();
    Rig standby;
    NetDriver continued = continue_on(standby, rig.snapshot(), driver);
    rig.transport->resume();
    CHECK(driver.get_used(driver.rx) == Used{0, k_hdr + 300});

    // A standby that loads the state into a machine never paused and starts it: nothing
    // calls resume(), and the guest has its buffers posted already (no notification comes).
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.net->rx_backlog() == 1);
    CHECK(standby.net->receive(b));
    CHECK(continued.get_used(continued.rx) == Used{0, k_hdr + 300});
    CHECK(continued.get_used(continued.rx) == Used{1, k_hdr + 400});
    CHECK(standby.bytes_at(0x40000 + k_hdr, 300) == a);
    CHECK(standby.bytes_at(0x41000 + k_hdr, 400) == b);
    CHECK(standby.net->rx_backlog() == 0);
}

TEST_CASE("virtio-net check_state refuses a malformed backlog, saying which field, and the old version") {
    NetDevice net(k_mac, {});
    constexpr uint16_t v = NetDevice::k_state_version;
    auto a = make_frame(60, 1), b = make_frame(1514, 2);
    auto good = net_state(0x0a000005, {a, b});
    REQUIRE(net.check_state(v, good));
    REQUIRE(net.load_state(v, good));
    REQUIRE(net.rx_backlog() == 2);
    REQUIRE(net.save_state() == good);
    // check_state's message; load_state refuses the same and changes nothing.
    auto refusal = [&](uint16_t version, const std::vector<std::byte>& bytes) -> std::string {
        auto checked = net.check_state(version, bytes);
        CHECK_FALSE(net.load_state(version, bytes));
        CHECK(net.save_state() == good);
        CHECK(net.learned_ipv4() == 0x0a000005);
        CHECK(net.rx_backlog() == 2);
        if (checked) {
            FAIL_CHECK("accepted");
            return {};
        }
        CHECK(checked.error().code() == (version == v ? base::Errc::Invalid : base::Errc::Unsupported));
        return checked.error().message();
    };
    using Catch::Contains;

    SECTION("truncated anywhere") {
        for (size_t len = 0; len < good.size(); ++len) {
            INFO("truncated to " << len);
            CHECK_THAT(refusal(v, std::vector<std::byte>(good.begin(), good.begin() + static_cast<long>(len))),
                       Contains("virtio-net state: truncated"));
        }
        // A count that promises more frames than follow.
        CHECK_THAT(refusal(v, net_state(0x0a000005, {a, b}, 3, std::nullopt)), Contains("truncated at byte"));
    }
    SECTION("a frame too short or too long for Ethernet") {
        CHECK_THAT(refusal(v, net_state(0x0a000005, {a, make_frame(NetDevice::k_min_frame - 1, 0)})),
                   Contains("receive backlog frame 1 of 13 bytes (an Ethernet frame has 14 to 65550)"));
        CHECK_THAT(refusal(v, net_state(0x0a000005, {make_frame(NetDevice::k_max_frame + 1, 0), a})),
                   Contains("receive backlog frame 0 of 65551 bytes"));
        CHECK_THAT(refusal(v, net_state(0x0a000005, {Frame{}})), Contains("receive backlog frame 0 of 0 bytes"));
        // A length that is no frame is refused before the bytes it claims are looked for.
        CHECK_THAT(refusal(v, concat(concat(net_state(0x0a000005, {}, 1, std::nullopt), Frame(NetDevice::k_header_size)),
                                     Frame(4, std::byte{0xff}))),
                   Contains("of 4294967295 bytes"));
    }
    SECTION("more frames than the backlog holds") {
        CHECK_THAT(refusal(v, net_state(0x0a000005, {}, NetDevice::k_rx_backlog + 1)),
                   Contains("receive backlog of 257 frames (at most 256)"));
        CHECK_THAT(refusal(v, net_state(0x0a000005, {}, 0xffffffff)), Contains("receive backlog of 4294967295 frames"));
        std::vector<Frame> many(NetDevice::k_rx_backlog + 1, a);
        CHECK_THAT(refusal(v, net_state(0x0a000005, many)), Contains("receive backlog of 257 frames"));
        // Exactly as many is fine.
        many.pop_back();
        CHECK(net.check_state(v, net_state(0x0a000005, many)));
    }
    SECTION("more bytes than the backlog holds") {
        auto big = make_frame(NetDevice::k_max_frame, 3);
        std::vector<Frame> frames(NetDevice::k_rx_backlog_bytes / big.size(), big);
        Frame rest = make_frame(NetDevice::k_rx_backlog_bytes - frames.size() * big.size(), 4);
        frames.push_back(rest);
        CHECK(net.check_state(v, net_state(0x0a000005, frames)));  // exactly the bound
        frames.back().push_back(std::byte{0});
        CHECK_THAT(refusal(v, net_state(0x0a000005, frames)),
                   Contains(fmt::format("receive backlog beyond {} bytes at frame {}", NetDevice::k_rx_backlog_bytes,
                                        frames.size() - 1)));
    }
    SECTION("trailing bytes") {
        auto longer = good;
        longer.push_back(std::byte{0});
        CHECK_THAT(refusal(v, longer), Contains("virtio-net state: 1 unexpected trailing bytes"));
        // A count of one frame fewer leaves the last frame trailing.
        CHECK_THAT(refusal(v, net_state(0x0a000005, {a, b}, 1)), Contains("unexpected trailing bytes"));
    }
    SECTION("older versions: 1, the address alone; 2, frames without their headers") {
        CHECK_THAT(refusal(1, std::vector<std::byte>{std::byte{10}, std::byte{0}, std::byte{0}, std::byte{5}}),
                   Contains("virtio-net state version 1 (this build reads 3)"));
        CHECK_THAT(refusal(1, good), Contains("version 1"));
        CHECK_THAT(refusal(2, good), Contains("virtio-net state version 2 (this build reads 3)"));
    }
}

TEST_CASE("a companion's state travels with the NIC's: saved after the backlog, checked, and handed back on load") {
    NetDevice primary(k_mac, {}), standby(k_mac, {});
    auto saving = std::make_shared<TestCompanion>(), loading = std::make_shared<TestCompanion>();
    saving->saved = {std::byte{1}, std::byte{2}, std::byte{3}};
    primary.set_companion(saving);
    standby.set_companion(loading);
    constexpr uint16_t v = NetDevice::k_state_version;
    auto state = primary.save_state();
    CHECK(state == net_state(0, {}, {}, saving->saved));
    REQUIRE(standby.check_state(v, state));
    REQUIRE(standby.load_state(v, state));
    CHECK(loading->loaded == saving->saved);
    // A side without a companion saves none, and loading that hands the companion nothing (it
    // forgets what it had).
    NetDevice plain(k_mac, {});
    REQUIRE(standby.load_state(v, plain.save_state()));
    CHECK(loading->loaded.empty());
    CHECK(loading->loads == 2);
    // The companion refuses: the state is refused and nothing is loaded.
    auto refused = net_state(0, {}, {}, std::vector<std::byte>{std::byte{0xff}});
    auto checked = standby.check_state(v, refused);
    REQUIRE_FALSE(checked);
    CHECK_THAT(checked.error().message(), Catch::Contains("companion: refused"));
    CHECK_FALSE(standby.load_state(v, refused));
    CHECK(loading->loads == 2);
    // Without a companion here, a saved one is skipped; one over the bound is refused anyway.
    REQUIRE(plain.load_state(v, state));
    std::vector<std::byte> huge(NetDevice::k_max_companion_state + 1, std::byte{1});
    CHECK_FALSE(plain.check_state(v, net_state(0, {}, {}, huge)));
}

TEST_CASE("the largest virtio-net state fits one checkpoint frame and the transport's cap") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.send(0, 0x30000, arp_request(k_mac, 0xc0a80a07, 0xc0a80a01));
    // A full backlog by both bounds: as many frames as it takes, as many bytes as it holds.
    size_t left = NetDevice::k_rx_backlog_bytes;
    for (size_t i = 0; i < NetDevice::k_rx_backlog; ++i) {
        size_t later = (NetDevice::k_rx_backlog - i - 1) * NetDevice::k_min_frame;
        size_t size = std::min(NetDevice::k_max_frame, left - later);
        REQUIRE(rig.net->receive(make_frame(size, static_cast<uint8_t>(i))));
        left -= size;
    }
    REQUIRE(left == 0);
    REQUIRE_FALSE(rig.net->receive(make_frame(NetDevice::k_min_frame, 0)));
    // And the largest companion state.
    auto companion = std::make_shared<TestCompanion>();
    companion->saved.assign(NetDevice::k_max_companion_state, std::byte{1});
    rig.net->set_companion(companion);
    CHECK(rig.net->save_state().size() == NetDevice::k_max_state_size);
    CHECK(NetDevice::k_max_state_size <= MmioTransport::k_max_device_state);

    rig.transport->quiesce();
    DeviceState saved = rig.transport->save_state();
    // What the checkpoint pipeline does with it: a device section in frames of
    // k_checkpoint_frame_payload (a section never spans frames).
    proto::StateInput input;
    input.sections.push_back({proto::SectionId::Device, saved.version, 0, saved.name, saved.bytes});
    proto::StateEncoder encoder(proto::EncoderOptions{k_checkpoint_frame_payload, proto::ZeroScan::On});
    auto encoded = encoder.encode(input);
    INFO((encoded ? std::string() : encoded.error().message()));
    CHECK(encoded);

    Rig standby;
    auto standby_companion = std::make_shared<TestCompanion>();
    standby.net->set_companion(standby_companion);
    REQUIRE(standby.transport->check_state(saved));
    REQUIRE(standby.transport->load_state(saved));
    CHECK(standby.net->rx_backlog() == NetDevice::k_rx_backlog);
    CHECK(standby_companion->loaded == companion->saved);
    standby_companion->saved = standby_companion->loaded;
    CHECK(standby.transport->save_state().bytes == saved.bytes);
}

TEST_CASE("a device reset keeps the learned address") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.send(0, 0x30000, arp_request(k_mac, 0xc0a80a07, 0xc0a80a01));
    driver.start();
    CHECK(rig.net->learned_ipv4() == 0xc0a80a07);
}

TEST_CASE("receive() from another thread races the driver posting buffers safely") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    constexpr int k_frames = 2000;
    std::atomic<int> accepted{0};
    std::thread world([&] {
        for (int i = 0; i < k_frames; ++i) {
            Frame f = make_frame(60 + static_cast<size_t>(i % 200), static_cast<uint8_t>(i));
            f[14] = std::byte(static_cast<uint8_t>(i));
            f[15] = std::byte(static_cast<uint8_t>(i >> 8));
            while (!rig.net->receive(f))
                std::this_thread::yield();  // dropped: the backlog was full, send it again
            accepted.fetch_add(1);
        }
    });
    // The driver: keeps buffers posted, takes used ones, checks each frame's sequence number.
    int next = 0;
    uint16_t posted = 0;
    for (uint16_t i = 0; i < driver.rx.size; ++i, ++posted)
        driver.post_rx(i, 0x40000 + 0x1000ull * i, 1526);
    while (next < k_frames) {
        auto got = driver.get_used(driver.rx);
        if (!got) {
            std::this_thread::yield();
            continue;
        }
        uint64_t gpa = 0x40000 + 0x1000ull * got->first;
        int seq = rig.peek<uint8_t>(gpa + k_hdr + 14) | (rig.peek<uint8_t>(gpa + k_hdr + 15) << 8);
        REQUIRE(got->second == k_hdr + 60 + static_cast<uint32_t>(next % 200));
        REQUIRE(seq == next);
        ++next;
        driver.post_rx(static_cast<uint16_t>(got->first), gpa, 1526);
        driver.interrupt();
    }
    world.join();
    CHECK(accepted == k_frames);
    CHECK(rig.net->counters().rx_frames == static_cast<uint64_t>(k_frames));
}

namespace {

constexpr size_t k_l4 = 14 + 20;  // where the TCP header starts in tcp_frame()'s frames

// A TCP/IPv4 frame with `payload` bytes, its TCP checksum left as a host leaves it for an
// offload (NEEDS_CSUM).
Frame tcp_frame(size_t payload) {
    const frames::Host4 from{{0x02, 0, 0, 0, 0, 1}, 0x0a000001, 40000};
    const frames::Host4 to{{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 0x0a000002, 80};
    return frames::tcp4_unfinished(from, to, {1, 1, frames::k_ack, 65535, std::string(payload, 'p')});
}

bool tcp_checksum_ok(std::span<const std::byte> frame) { return frames::tcp_checksum_valid(frame); }

net::VnetHeader partial_header(uint8_t gso_type = net::VnetHeader::k_gso_none, uint16_t gso_size = 0) {
    net::VnetHeader h;
    h.flags = net::VnetHeader::k_needs_csum;
    h.csum_start = k_l4;
    h.csum_offset = 16;
    h.gso_type = gso_type;
    h.gso_size = gso_size;
    h.hdr_len = gso_type ? k_l4 + 20 : 0;
    return h;
}

// A header as a NIC writes it (num_buffers given) or as a state saves it (0).
Frame header_bytes(const net::VnetHeader& header, uint16_t num_buffers = 0) {
    auto bytes = header.encode(num_buffers);
    return Frame(bytes.begin(), bytes.end());
}

constexpr uint64_t k_offloads =
    NetDevice::k_feature_guest_csum | NetDevice::k_feature_guest_tso4 | NetDevice::k_feature_guest_tso6;

}  // namespace

TEST_CASE("receive offloads: a guest that took them gets each frame's header as it came, 64 KiB segments included") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    REQUIRE((driver.features & k_offloads) == k_offloads);
    // Linux's big receive buffers: a chain with room for a 64 KiB segment and its header.
    driver.set_desc(driver.rx, 0, 0x40000, k_hdr, k_desc_f_write | k_desc_f_next, 1);
    driver.set_desc(driver.rx, 1, 0x50000, 0x11000, k_desc_f_write);
    driver.post(driver.rx, 0);
    driver.post_rx(2, 0x70000, 1526);
    driver.post_rx(3, 0x71000, 1526);

    auto segment = tcp_frame(65535 - 40);  // the largest IPv4 packet
    auto gso = partial_header(net::VnetHeader::k_gso_tcpv4, 1448);
    CHECK(rig.net->receive(segment, gso));
    CHECK(driver.get_used(driver.rx) == Used{0, uint32_t(k_hdr + segment.size())});
    CHECK(rig.bytes_at(0x40000, k_hdr) == header_bytes(gso, 1));
    CHECK(rig.bytes_at(0x50000, segment.size()) == segment);  // as it came: the checksum the guest's to finish

    net::VnetHeader valid;
    valid.flags = net::VnetHeader::k_data_valid;
    auto small = tcp_frame(100);
    CHECK(rig.net->receive(small, valid));
    CHECK(driver.get_used(driver.rx) == Used{2, uint32_t(k_hdr + small.size())});
    CHECK(rig.bytes_at(0x70000, k_hdr) == header_bytes(valid, 1));

    CHECK(rig.net->receive(small, partial_header()));
    CHECK(driver.get_used(driver.rx) == Used{3, uint32_t(k_hdr + small.size())});
    CHECK(rig.bytes_at(0x71000 + k_hdr, small.size()) == small);

    auto counters = rig.net->counters();
    CHECK(counters.rx_frames == 3);
    CHECK(counters.rx_gso_frames == 1);
    CHECK(counters.rx_csum_done == 0);
    CHECK(counters.rx_dropped == 0);
}

TEST_CASE("receive offloads: a guest that did not take them gets checksums finished and no flags; segments are dropped") {
    Rig rig;
    NetDriver driver(rig);
    driver.start(~k_offloads);
    REQUIRE((driver.features & k_offloads) == 0);
    driver.post_rx(0, 0x40000, 1526);
    driver.post_rx(1, 0x41000, 1526);

    auto frame = tcp_frame(333);  // odd: the last byte is summed alone
    REQUIRE_FALSE(tcp_checksum_ok(frame));
    CHECK(rig.net->receive(frame, partial_header()));
    CHECK(driver.get_used(driver.rx) == Used{0, uint32_t(k_hdr + frame.size())});
    CHECK(rig.bytes_at(0x40000, k_hdr) == rx_header());
    auto delivered = rig.bytes_at(0x40000 + k_hdr, frame.size());
    CHECK(tcp_checksum_ok(delivered));
    Frame expected = frame;  // the same frame but for the checksum field
    expected[k_l4 + 16] = delivered[k_l4 + 16];
    expected[k_l4 + 17] = delivered[k_l4 + 17];
    CHECK(delivered == expected);

    // DATA_VALID means nothing to such a guest: cleared.
    net::VnetHeader valid;
    valid.flags = net::VnetHeader::k_data_valid;
    auto plain = tcp_frame(10);
    CHECK(rig.net->receive(plain, valid));
    CHECK(driver.get_used(driver.rx) == Used{1, uint32_t(k_hdr + plain.size())});
    CHECK(rig.bytes_at(0x41000, k_hdr) == rx_header());

    // A segment it cannot take: dropped before any buffer is used (TCP sends it again).
    driver.post_rx(2, 0x42000, 1526);
    auto before = rig.snapshot();
    CHECK_FALSE(rig.net->receive(tcp_frame(1400), partial_header(net::VnetHeader::k_gso_tcpv4, 700)));
    CHECK(unchanged_outside(rig, before, {}));
    auto counters = rig.net->counters();
    CHECK(counters.rx_frames == 2);
    CHECK(counters.rx_csum_done == 1);
    CHECK(counters.rx_dropped == 1);
    CHECK(counters.bad_headers == 1);
    CHECK(rig.net->rx_backlog() == 0);
}

TEST_CASE("receive offloads: headers that do not describe their frame, or that no guest can take, drop the frame") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    driver.post_rx(0, 0x40000, 1526);
    auto frame = tcp_frame(100);
    auto bad = [&](net::VnetHeader header) {
        auto before = rig.snapshot();
        CHECK_FALSE(rig.net->receive(frame, header));
        CHECK(unchanged_outside(rig, before, {}));
    };
    net::VnetHeader h = partial_header();
    h.csum_offset = static_cast<uint16_t>(frame.size() - k_l4 - 1);  // the field runs past the end
    bad(h);
    h = partial_header();
    h.csum_start = 0xffff;
    bad(h);
    bad(partial_header(net::VnetHeader::k_gso_udp, 1000));                                   // UFO: not offered
    bad(partial_header(net::VnetHeader::k_gso_tcpv4 | net::VnetHeader::k_gso_ecn, 1000));  // ECN: not offered
    bad(partial_header(net::VnetHeader::k_gso_tcpv6 + 1, 1000));                             // no such kind
    bad(partial_header(net::VnetHeader::k_gso_tcpv4, 0));                                    // no segment size
    h = partial_header(net::VnetHeader::k_gso_tcpv4, 1000);
    h.flags = 0;  // a segment whose checksum is done: Linux refuses those
    bad(h);
    CHECK(rig.net->counters().bad_headers == 7);
    CHECK(rig.net->counters().rx_dropped == 7);
    // The queue still works.
    CHECK(rig.net->receive(frame, partial_header()));
    CHECK(driver.get_used(driver.rx) == Used{0, uint32_t(k_hdr + frame.size())});
}

TEST_CASE("receive offloads: the listener hears what the guest accepts at DRIVER_OK, none at a reset, and again on demand") {
    Rig rig;
    std::vector<uint64_t> heard;
    rig.net->set_offload_listener([&](uint64_t features) { heard.push_back(features); });
    CHECK(heard == std::vector<uint64_t>{0});  // told at once: nothing runs yet
    NetDriver driver(rig);
    driver.start();  // a probe resets the device first (STATUS 0)
    CHECK(heard == std::vector<uint64_t>{0, 0, NetDevice::k_features});
    CHECK(rig.net->guest_features() == NetDevice::k_features);
    driver.start(~NetDevice::k_feature_guest_tso6);
    const uint64_t without_tso6 = NetDevice::k_features & ~NetDevice::k_feature_guest_tso6;
    CHECK(heard == std::vector<uint64_t>{0, 0, NetDevice::k_features, 0, without_tso6});
    rig.net->refresh_offloads();
    CHECK(heard.size() == 6);
    CHECK(heard.back() == without_tso6);
    rig.net->set_offload_listener(nullptr);
    driver.start();
    CHECK(heard.size() == 6);
}

TEST_CASE("receive offloads: a backlogged frame keeps its header through a checkpoint, and is fitted to the guest that gets it") {
    Rig rig;
    NetDriver driver(rig);
    driver.start();
    auto frame = tcp_frame(500);
    REQUIRE(rig.net->receive(frame, partial_header()));  // no buffer: it waits
    rig.transport->quiesce();
    DeviceState saved = rig.transport->save_state();
    rig.transport->resume();
    StateWriter expected;  // address, one frame: its header, then its length and bytes; no companion
    expected.put(uint32_t{0});
    expected.put(uint32_t{1});
    expected.put_bytes(partial_header().encode());
    expected.put_blob(frame);
    expected.put_blob(std::vector<std::byte>{});
    CHECK(rig.net->save_state() == expected.take());

    // A standby loads it with the guest's memory; its guest took the offloads (the same driver).
    Rig standby;
    NetDriver continued = continue_on(standby, rig.snapshot(), driver);
    REQUIRE(standby.transport->load_state(saved));
    continued.post_rx(0, 0x40000, 1526);
    CHECK(continued.get_used(continued.rx) == Used{0, uint32_t(k_hdr + frame.size())});
    CHECK(standby.bytes_at(0x40000, k_hdr) == header_bytes(partial_header(), 1));
    CHECK(standby.bytes_at(0x40000 + k_hdr, frame.size()) == frame);

    // Its driver restarts without the offloads before the frame is delivered: finished here.
    REQUIRE(rig.net->receive(frame, partial_header()));
    driver.start(~k_offloads);
    driver.post_rx(0, 0x40000, 1526);
    CHECK(driver.get_used(driver.rx) == Used{0, uint32_t(k_hdr + frame.size())});
    CHECK(rig.bytes_at(0x40000, k_hdr) == rx_header());
    CHECK(tcp_checksum_ok(rig.bytes_at(0x40000 + k_hdr, frame.size())));
}

TEST_CASE("doorbells: a rung transmit queue reaches the sink from the transport's thread; rung while quiesced, at resume") {
    TestDoorbells bells;  // outlives the transport
    Rig rig;
    REQUIRE(rig.transport->use_doorbells(bells));
    CHECK(rig.transport->has_doorbells());
    CHECK(bells.connected.size() == 2);  // receive and transmit queue
    NetDriver driver(rig);
    driver.start();
    auto a = make_frame(100, 1), b = make_frame(200, 2), c = make_frame(300, 3);

    driver.send(0, 0x30000, a, false);
    bells.ring(1);
    REQUIRE(wait_under_lock(*rig.transport, [&] { return rig.sent.size() == 1; }));
    CHECK(rig.sent == std::vector<Frame>{a});
    CHECK(driver.get_used(driver.tx) == Used{0, 0});

    // Quiesced (a checkpoint's pause): the ring is taken, the device not touched until resume.
    rig.transport->quiesce();
    driver.send(1, 0x31000, b, false);
    auto before = rig.snapshot();
    bells.ring(1);
    REQUIRE(bells.taken(1));
    {
        auto lock = rig.transport->lock();  // the thread's turn, if it is in one, ends first
        CHECK(rig.sent.size() == 1);
        CHECK(unchanged_outside(rig, before, {}));
    }
    rig.transport->resume();
    CHECK(rig.sent == std::vector<Frame>{a, b});
    CHECK(driver.get_used(driver.tx) == Used{1, 0});

    // A notification as an MMIO write (what the doorbell does not take) still works.
    driver.send(2, 0x32000, c);
    CHECK(rig.sent == std::vector<Frame>{a, b, c});

    rig.transport.reset();  // stops the thread and disconnects every doorbell
    CHECK(bells.connected.empty());
    CHECK(bells.disconnects == 2);
}

TEST_CASE("doorbells: one that cannot be connected leaves none, and the transport on MMIO notifications") {
    TestDoorbells bells;
    bells.refuse = 1;
    Rig rig;
    auto refused = rig.transport->use_doorbells(bells);
    REQUIRE(!refused);
    CHECK_THAT(refused.error().message(), Catch::Contains("virtio-net@") && Catch::Contains("queue 1") &&
                                              Catch::Contains("refused by the test"));
    CHECK(bells.connected.empty());
    CHECK(bells.disconnects == 1);  // queue 0's, connected first
    CHECK(!rig.transport->has_doorbells());
    NetDriver driver(rig);
    driver.start();
    auto a = make_frame(100, 1);
    driver.send(0, 0x30000, a);
    CHECK(rig.sent == std::vector<Frame>{a});

    TestDoorbells second;
    REQUIRE(rig.transport->use_doorbells(second));
    auto again = rig.transport->use_doorbells(second);
    REQUIRE(!again);
    CHECK_THAT(again.error().message(), Catch::Contains("already"));
    rig.transport.reset();
    CHECK(second.connected.empty());
}
