// SPDX-License-Identifier: GPL-2.0-or-later
// GuestNetwork between a virtio-net NIC, driven by a fake guest driver through a real
// MmioTransport (tests/support/virtio_driver.h), and a real tap interface in a network
// namespace of the test's own, whose host side is an AF_PACKET socket bound to the tap
// (tests/support/netns.h). Needs root; skips with a warning otherwise.
//
// Nothing here sleeps to let something happen: frames are awaited with deadlines, and "this
// frame never reached the tap" is shown by order (a later frame arrives and nothing came
// before it), since a tap keeps the order of what is written to it.
#define CATCH_CONFIG_ENABLE_OPTIONAL_STRINGMAKER  // a frame that did not come prints as nullopt
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/log.h"
#include "core/guest_network.h"
#include "core/net/frames.h"
#include "core/net/tap.h"
#include "core/net/tcp_rewriter.h"
#include "core/virtio/net.h"
#include "tests/support/backend.h"
#include "tests/support/frame_builder.h"
#include "tests/support/netns.h"
#include "tests/support/test_net.h"
#include "tests/support/virtio_driver.h"

using namespace colod;
using namespace colod::core;
using namespace colod::test;
using namespace std::chrono_literals;

namespace {

constexpr net::Mac k_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr uint32_t k_guest_ipv4 = 0xc0a80a07;  // 192.168.10.7
constexpr uint32_t k_gateway_ipv4 = 0xc0a80a01;
constexpr const char* k_tap = "cgtap0";
constexpr auto k_deadline = 10s;

bool root_or_skip() { return test::root_or_skip("the GuestNetwork tests"); }

uint16_t ethertype(std::span<const std::byte> frame) {
    return frame.size() < 14 ? 0
                             : static_cast<uint16_t>(std::to_integer<uint16_t>(frame[12]) << 8 |
                                                     std::to_integer<uint16_t>(frame[13]));
}
// make_frame()'s frames (EtherType 0x88b5), whoever sent them.
bool is_test_frame(std::span<const std::byte> frame) { return ethertype(frame) == 0x88b5; }
// Anything with the guest's MAC as its source: what the guest and the announcer send.
bool from_guest(std::span<const std::byte> frame) {
    if (frame.size() < 14)
        return false;
    for (size_t i = 0; i < k_mac.size(); ++i)
        if (std::to_integer<uint8_t>(frame[6 + i]) != k_mac[i])
            return false;
    return true;
}

bool guest_test_frame(std::span<const std::byte> frame) { return from_guest(frame) && is_test_frame(frame); }

// A guest whose NIC the driver has started, as a machine builds it: no transmit sink until
// GuestNetwork::open() gives one, receive buffers posted.
struct Guest : VirtioRig {
    static constexpr uint16_t k_rx_buffers = 64;
    static constexpr uint32_t k_rx_buffer_size = 2048;  // header and a 1514-byte frame
    static constexpr uint16_t k_tx_chains = 16;

    virtio::NetDevice* nic = nullptr;
    NetDriver driver{*this};
    uint16_t next_tx = 0;

    Guest() {
        auto device = std::make_unique<virtio::NetDevice>(k_mac, virtio::NetDevice::Transmit{});
        nic = device.get();
        attach(std::move(device));
        driver.rx.size = k_rx_buffers;
        driver.tx.size = k_tx_chains;
        driver.start();
        for (uint16_t i = 0; i < k_rx_buffers; ++i)
            driver.post_rx(i, rx_gpa(i), k_rx_buffer_size, false);
        driver.kick(driver.rx);
    }

    static uint64_t rx_gpa(uint32_t head) { return 0x100000 + 0x1000ull * head; }

    // The guest sends `frame` (posts a chain and kicks); returns the chain's head.
    uint16_t transmit(std::span<const std::byte> frame) {
        uint16_t head = next_tx;
        next_tx = static_cast<uint16_t>((next_tx + 1) % k_tx_chains);
        driver.send(head, 0x30000 + 0x1000ull * head, frame);
        return head;
    }
    // Heads of the transmit chains the device returned since the last call.
    std::vector<uint32_t> transmitted() {
        std::vector<uint32_t> heads;
        while (auto used = driver.get_used(driver.tx))
            heads.push_back(used->first);
        return heads;
    }

    // Frames the device put into receive buffers that `accept` takes, in order, until `count`
    // of them came or the deadline passed; every buffer returned is posted again.
    std::vector<Frame> receive(size_t count, const std::function<bool(std::span<const std::byte>)>& accept) {
        std::vector<Frame> frames;
        auto deadline = std::chrono::steady_clock::now() + scaled(k_deadline);
        while (frames.size() < count && std::chrono::steady_clock::now() < deadline) {
            auto used = driver.get_used(driver.rx);
            if (!used) {
                std::this_thread::sleep_for(1ms);  // polling the used ring, as a guest without interrupts
                continue;
            }
            auto [head, len] = *used;
            if (len > virtio::NetDevice::k_header_size) {
                Frame frame = bytes_at(rx_gpa(head) + virtio::NetDevice::k_header_size,
                                       len - virtio::NetDevice::k_header_size);
                if (accept(frame))
                    frames.push_back(std::move(frame));
            }
            driver.post_rx(static_cast<uint16_t>(head), rx_gpa(head), k_rx_buffer_size);
        }
        return frames;
    }
};

// Aborts the test binary if it lives longer than `limit` (scaled by COLOD_TEST_TIME_SCALE): a
// step that hangs (a destructor waiting for a thread that never ends, a deadlock) cannot be
// failed any other way.
class Watchdog {
public:
    Watchdog(std::string what, std::chrono::seconds limit)
        : m_thread([this, what = std::move(what), limit] {
              std::unique_lock lock(m_mutex);
              if (!m_done_cv.wait_for(lock, scaled(limit), [&] { return m_done; })) {
                  std::fprintf(stderr, "FAILED: %s did not end within %llds\n", what.c_str(),
                               static_cast<long long>(scaled(limit).count()));
                  std::abort();
              }
          }) {}
    ~Watchdog() {
        {
            std::lock_guard lock(m_mutex);
            m_done = true;
        }
        m_done_cv.notify_all();
        m_thread.join();
    }
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

private:
    std::mutex m_mutex;
    std::condition_variable m_done_cv;
    bool m_done = false;
    std::thread m_thread;
};

// Log records, from any thread, while it lives (installed before and removed after the
// threads that log).
class LogCapture {
public:
    LogCapture() {
        base::set_log_sink([this](const base::LogRecord& record) {
            base::stderr_sink(record);
            std::lock_guard lock(m_mutex);
            m_records.push_back(record.message);
            if (record.level == base::Level::Error)
                ++m_errors;
        });
    }
    ~LogCapture() { base::set_log_sink({}); }
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;

    int errors() const {
        std::lock_guard lock(m_mutex);
        return m_errors;
    }
    std::vector<std::string> messages() const {
        std::lock_guard lock(m_mutex);
        return m_records;
    }

private:
    mutable std::mutex m_mutex;
    std::vector<std::string> m_records;
    int m_errors = 0;
};

// A sink that takes frames while `accept` is set and counts refusals.
struct RecordingSink {
    std::mutex mutex;
    std::vector<Frame> taken;
    bool accept = true;
    int refused = 0;

    GuestNetwork::PacketSink sink() {
        return [this](std::span<const std::byte> frame) {
            std::lock_guard lock(mutex);
            if (!accept) {
                ++refused;
                return false;
            }
            taken.emplace_back(frame.begin(), frame.end());
            return true;
        };
    }
    void set_accept(bool value) {
        std::lock_guard lock(mutex);
        accept = value;
    }
    std::vector<Frame> frames() {
        std::lock_guard lock(mutex);
        return taken;
    }
    int refusals() {
        std::lock_guard lock(mutex);
        return refused;
    }
};

std::unique_ptr<GuestNetwork> open_network(Guest& guest) {
    auto network = GuestNetwork::open(k_tap, *guest.nic);
    if (!network)
        FAIL(network.error().message());
    return std::move(network).value();
}

// A tap `k_tap` in the namespace, up unless told otherwise.
enum class Link { Up, Down };
void make_tap(Link link = Link::Up) {
    NetnsScope::sh(fmt::format("ip tuntap add dev {} mode tap", k_tap));
    if (link == Link::Up)
        NetnsScope::sh(fmt::format("ip link set {} up", k_tap));
}

}  // namespace

TEST_CASE("GuestNetwork::open refuses a missing tap, naming it, and leaves the NIC alone; an existing tap works") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    Guest guest;

    auto missing = GuestNetwork::open(k_tap, *guest.nic);
    REQUIRE_FALSE(missing);
    INFO(missing.error().message());
    CHECK(missing.error().message().find(fmt::format("'{}'", k_tap)) != std::string::npos);
    // The NIC has no sink still: what the guest sends waits in its ring.
    auto early = make_frame(60, 1);
    guest.transmit(early);
    CHECK(guest.transmitted().empty());

    make_tap();
    PacketSocket host(k_tap);
    auto network = open_network(guest);
    CHECK(network->tap_name() == k_tap);
    CHECK_FALSE(network->input_started());
    CHECK(network->announcements() == 0);
    // The frame that waited goes out now that the NIC has somewhere to send it.
    CHECK(guest.transmitted() == std::vector<uint32_t>{0});
    CHECK(host.receive(is_test_frame) == early);

    // One GuestNetwork per tap: a second is refused while the first holds it.
    Guest other;
    auto second = GuestNetwork::open(k_tap, *other.nic);
    REQUIRE_FALSE(second);
    CHECK(second.error().message().find("in use") != std::string::npos);
}

TEST_CASE("without a sink the guest's frames go straight onto the tap, in order") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    Guest guest;
    auto network = open_network(guest);

    std::vector<Frame> sent = {make_frame(60, 1), make_frame(1514, 2), make_frame(200, 3)};
    for (auto& frame : sent)
        guest.transmit(frame);
    CHECK(guest.transmitted() == std::vector<uint32_t>{0, 1, 2});
    for (auto& frame : sent)
        CHECK(host.receive(is_test_frame) == frame);
    auto counters = guest.nic->counters();
    CHECK(counters.tx_frames == 3);
    CHECK(counters.tx_bytes == 60 + 1514 + 200);
}

TEST_CASE("with a sink the guest's frames go to it and not onto the tap; a refusing sink keeps them in the ring") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    Guest guest;
    auto network = open_network(guest);
    RecordingSink held;
    network->set_sink(held.sink());

    // Taken by the sink; onto the tap only when released (the held-output path).
    auto a = make_frame(100, 1);
    guest.transmit(a);
    CHECK(guest.transmitted() == std::vector<uint32_t>{0});
    CHECK(held.frames() == std::vector<Frame>{a});
    network->release(a);
    CHECK(host.receive(is_test_frame) == a);

    // Refused: the chain stays in the ring, and the sink is not asked again before ready().
    held.set_accept(false);
    auto b = make_frame(110, 2);
    guest.transmit(b);
    CHECK(held.refusals() == 1);
    CHECK(guest.transmitted().empty());
    held.set_accept(true);
    guest.driver.kick(guest.driver.tx);
    CHECK(guest.transmitted().empty());
    CHECK(held.frames() == std::vector<Frame>{a});
    network->ready();
    CHECK(held.frames() == std::vector<Frame>{a, b});
    CHECK(guest.transmitted() == std::vector<uint32_t>{1});

    // A new sink is offered what the old one refused.
    held.set_accept(false);
    auto c = make_frame(120, 3);
    guest.transmit(c);
    CHECK(guest.transmitted().empty());
    RecordingSink next;
    network->set_sink(next.sink());
    CHECK(next.frames() == std::vector<Frame>{c});
    CHECK(guest.transmitted() == std::vector<uint32_t>{2});

    // No sink again: what waits in the ring goes straight onto the tap.
    next.set_accept(false);
    auto d = make_frame(130, 4);
    guest.transmit(d);
    CHECK(guest.transmitted().empty());
    network->set_sink(nullptr);
    CHECK(guest.transmitted() == std::vector<uint32_t>{3});
    // The next frame on the tap after `a` is `d`: b and c went to sinks only, `a` out once.
    CHECK(host.receive(is_test_frame) == d);
    auto e = make_frame(140, 5);
    guest.transmit(e);
    CHECK(host.receive(is_test_frame) == e);
    CHECK(held.frames() == std::vector<Frame>{a, b});
    CHECK(next.frames() == std::vector<Frame>{c});
}

TEST_CASE("start_input drops what queued on the tap; frames after it reach the guest in order") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    Guest guest;
    auto network = open_network(guest);

    // For the guest that ran elsewhere: in the tap's queue once send() returns (qdisc bypass).
    for (uint8_t i = 0; i < 5; ++i)
        host.send(make_frame(64 + i, static_cast<uint8_t>(100 + i)));
    CHECK_FALSE(network->input_started());
    CHECK(guest.nic->counters().rx_frames == 0);
    CHECK(guest.nic->rx_backlog() == 0);

    REQUIRE(network->start_input());
    CHECK(network->input_started());
    REQUIRE(network->start_input());  // idempotent
    CHECK(network->input_started());

    std::vector<Frame> sent;
    for (uint8_t i = 0; i < 100; ++i) {  // more than the guest has buffers posted
        sent.push_back(make_frame(60 + i * 13u, i));
        host.send(sent.back());
    }
    // Exactly these, in order: none of those sent before start_input came before them.
    CHECK(guest.receive(sent.size(), is_test_frame) == sent);

    // Input keeps running after a second start_input().
    REQUIRE(network->start_input());
    auto later = make_frame(1514, 200);
    host.send(later);
    CHECK(guest.receive(1, is_test_frame) == std::vector<Frame>{later});
}

TEST_CASE("an input hook gets every frame from the tap in order and decides what the guest gets; without it they go "
          "straight in") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    Guest guest;
    auto network = open_network(guest);

    // COLO's primary: every frame is seen (and forwarded), the guest gets what deliver() gives.
    std::mutex mutex;
    std::vector<Frame> seen;
    std::vector<bool> delivered;
    network->set_input_hook([&](const core::net::VnetHeader& header, std::span<const std::byte> frame) {
        CHECK(header == core::net::VnetHeader{});  // not IP: nothing left to do on them
        if (!is_test_frame(frame))
            return;
        std::lock_guard lock(mutex);
        seen.emplace_back(frame.begin(), frame.end());
        bool give = seen.size() % 2 == 1;  // every other one
        delivered.push_back(give && network->deliver(frame));
    });
    REQUIRE(network->start_input());
    std::vector<Frame> sent, given;
    for (uint8_t i = 0; i < 20; ++i) {
        sent.push_back(make_frame(60 + i * 7u, i));
        if (i % 2 == 0)
            given.push_back(sent.back());
        host.send(sent.back());
    }
    CHECK(guest.receive(given.size(), is_test_frame) == given);
    {
        std::lock_guard lock(mutex);
        CHECK(seen == sent);
        CHECK(std::count(delivered.begin(), delivered.end(), true) == static_cast<long>(given.size()));
    }

    // Without the hook, straight to the guest.
    network->set_input_hook(nullptr);
    auto later = make_frame(100, 99);
    host.send(later);
    CHECK(guest.receive(1, is_test_frame) == std::vector<Frame>{later});
    std::lock_guard lock(mutex);
    CHECK(seen.size() == sent.size());
}

TEST_CASE("the tap's offloads follow the guest's driver: 64 KiB segments while it takes them, whole frames once it "
          "restarts without") {
    if (!root_or_skip())
        return;
    using namespace colod::test::frames;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    VnetPacketSocket host(k_tap);
    Guest guest;  // its driver took every offload
    auto network = open_network(guest);
    std::mutex mutex;
    std::condition_variable arrived;
    std::vector<net::VnetHeader> headers;
    network->set_input_hook([&](const net::VnetHeader& header, std::span<const std::byte> frame) {
        if (ethertype(frame) != 0x0800)
            return;
        std::lock_guard lock(mutex);
        headers.push_back(header);
        arrived.notify_all();
    });
    REQUIRE(network->start_input());
    auto wait_for = [&](size_t count) {
        std::unique_lock lock(mutex);
        return arrived.wait_for(lock, k_deadline, [&] { return headers.size() >= count; });
    };

    const Host4 client{{0x02, 0, 0, 0, 0, 0x02}, 0x0a000002, 40000};
    const Host4 guest_host{k_mac, 0x0a00000a, 80};
    auto segment = tcp4_unfinished(client, guest_host, {1, 1, k_ack, 65535, std::string(4000, 's')});
    net::VnetHeader gso;
    gso.flags = net::VnetHeader::k_needs_csum;
    gso.gso_type = net::VnetHeader::k_gso_tcpv4;
    gso.hdr_len = 54;
    gso.gso_size = 1000;
    gso.csum_start = 34;
    gso.csum_offset = 16;
    host.send(gso, segment);
    REQUIRE(wait_for(1));
    {
        std::lock_guard lock(mutex);
        CHECK(headers[0].gso_type == net::VnetHeader::k_gso_tcpv4);
        CHECK(headers[0].gso_size == 1000);
        headers.clear();
    }

    // The driver restarts (a reset, then features without the offloads): cut by the host.
    guest.driver.start(~(virtio::NetDevice::k_feature_guest_csum | virtio::NetDevice::k_feature_guest_tso4 |
                         virtio::NetDevice::k_feature_guest_tso6));
    host.send(gso, segment);
    REQUIRE(wait_for(4));
    std::lock_guard lock(mutex);
    CHECK(headers.size() == 4);
    for (const auto& header : headers)
        CHECK(header == net::VnetHeader{});
}

TEST_CASE("a rewriter moves the guest's TCP sequence numbers onto the primary's, out through the sink and in through "
          "deliver()") {
    if (!root_or_skip())
        return;
    using namespace colod::test::frames;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    Guest guest;
    auto network = open_network(guest);
    RecordingSink sink;
    network->set_sink(sink.sink());
    auto rewriter = std::make_shared<net::TcpRewriter>();
    network->set_rewriter(rewriter);

    const Host4 client{{0x02, 0, 0, 0, 0, 0x02}, 0x0a000002, 40000};
    const Host4 guest_host{k_mac, 0x0a00000a, 80};
    constexpr uint32_t client_isn = 1000, primary_isn = 0x10000000, own_isn = 0x20000000;
    auto is_tcp = [](std::span<const std::byte> frame) { return ethertype(frame) == 0x0800; };

    // The client connects; the guest here answers with its own ISN; the client acknowledges
    // the primary's: the guest gets that acknowledgement in its own numbers.
    REQUIRE(network->deliver(tcp4(client, guest_host, {client_isn, 0, k_syn})));
    CHECK(guest.receive(1, is_tcp).size() == 1);
    guest.transmit(tcp4(guest_host, client, {own_isn, client_isn + 1, k_syn | k_ack}));
    REQUIRE(eventually([&] { return sink.frames().size() == 1; }, scaled(k_deadline)));
    REQUIRE(network->deliver(tcp4(client, guest_host, {client_isn + 1, primary_isn + 1, k_ack})));
    auto ack = guest.receive(1, is_tcp);
    REQUIRE(ack.size() == 1);
    CHECK(tcp_fields(ack[0]).ack == own_isn + 1);
    CHECK(tcp_checksum_valid(ack[0]));
    CHECK(rewriter->connections() == 1);

    // The guest's reply leaves in the primary's numbers, its checksum still right.
    guest.transmit(tcp4(guest_host, client, {own_isn + 1, client_isn + 1, k_ack | k_psh, 64240, "hello"}));
    REQUIRE(eventually([&] { return sink.frames().size() == 2; }, scaled(k_deadline)));
    auto reply = sink.frames()[1];
    CHECK(tcp_fields(reply).seq == primary_isn + 1);
    CHECK(tcp_checksum_valid(reply));

    // Without the rewriter the numbers pass as they are.
    network->set_rewriter(nullptr);
    guest.transmit(tcp4(guest_host, client, {own_isn + 6, client_isn + 1, k_ack | k_psh, 64240, "again"}));
    REQUIRE(eventually([&] { return sink.frames().size() == 3; }, scaled(k_deadline)));
    CHECK(tcp_fields(sink.frames()[2]).seq == own_isn + 6);
}

TEST_CASE("announce sends RARP rounds from the guest's MAC, and gratuitous ARPs once its address is known") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    Guest guest;
    auto network = open_network(guest);
    const auto rarp = net::rarp_announce(k_mac);
    const auto garp = net::gratuitous_arp(k_mac, k_guest_ipv4);

    // No address learned yet: RARP only.
    REQUIRE(guest.nic->learned_ipv4() == 0);
    network->announce();
    for (int i = 0; i < GuestNetwork::k_announce_rounds; ++i) {
        INFO("round " << i);
        CHECK(host.receive(from_guest) == rarp);
    }
    CHECK(eventually([&] { return network->announcements() == GuestNetwork::k_announce_rounds; }));

    // The guest resolves its gateway: the NIC learns its address from the ARP request.
    auto request = arp_request(k_mac, k_guest_ipv4, k_gateway_ipv4);
    guest.transmit(request);
    CHECK(guest.nic->learned_ipv4() == k_guest_ipv4);
    // Nothing else came from the guest's MAC after the five rounds.
    CHECK(host.receive(from_guest) == request);

    network->announce();
    for (int i = 0; i < GuestNetwork::k_announce_rounds; ++i) {
        INFO("round " << i);
        CHECK(host.receive(from_guest) == rarp);
        CHECK(host.receive(from_guest) == garp);
    }
    CHECK(eventually([&] { return network->announcements() == 2 * GuestNetwork::k_announce_rounds; }));

    // Still idle afterwards: the next frame from the guest's MAC is the guest's own.
    auto after = make_frame(60, 9, k_mac);
    guest.transmit(after);
    CHECK(host.receive(from_guest) == after);
    CHECK(network->announcements() == 2 * GuestNetwork::k_announce_rounds);
}

TEST_CASE("destroying a GuestNetwork that announces and reads input ends at once; the NIC's frames are dropped after") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap();
    PacketSocket host(k_tap);
    PacketSocket pump_socket(k_tap);
    Guest guest;
    auto network = open_network(guest);
    REQUIRE(network->start_input());

    // The world keeps sending while the network goes away.
    std::atomic<bool> pumping{true};
    std::thread pump([&] {
        auto frame = make_frame(200, 7);
        while (pumping.load())
            if (!pump_socket.try_send(frame))
                std::this_thread::yield();  // the tap's queue is full, or no one is attached any more
    });
    CHECK(eventually([&] { return guest.nic->counters().rx_frames > 0; }));
    network->announce();
    CHECK(eventually([&] { return network->announcements() >= 1; }));  // now between two rounds
    {
        Watchdog watchdog("destroying a GuestNetwork while it announces and reads input", 20s);
        network.reset();
    }
    pumping.store(false);
    pump.join();

    // The NIC's sink now drops: the chain comes back at once and nothing reaches the tap.
    uint64_t sent_before = guest.nic->counters().tx_frames;
    auto dropped = make_frame(100, 1, k_mac);
    uint16_t head = guest.transmit(dropped);
    CHECK(guest.transmitted() == std::vector<uint32_t>{head});
    CHECK(guest.nic->counters().tx_frames == sent_before + 1);

    // The tap is free again: a new GuestNetwork takes it and the NIC over, and the first of
    // the guest's test frames the host sees is one sent after that (an announce round may
    // have gone out before the end).
    auto again = open_network(guest);
    auto fresh = make_frame(100, 2, k_mac);
    guest.transmit(fresh);
    CHECK(host.receive(guest_test_frame) == fresh);
    {
        Watchdog watchdog("destroying an idle GuestNetwork", 20s);
        again.reset();
    }
}

TEST_CASE("a tap that is down loses the guest's frames with one error logged; announcing meanwhile does not deadlock") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    make_tap(Link::Down);
    Guest guest;
    LogCapture log;
    auto network = open_network(guest);

    guest.transmit(make_frame(100, 1));
    guest.transmit(make_frame(100, 2));
    CHECK(guest.transmitted() == std::vector<uint32_t>{0, 1});  // dropped, as a switch would
    CHECK(log.errors() == 1);
    auto messages = log.messages();
    REQUIRE(messages.size() == 1);
    CHECK(messages[0].find(k_tap) != std::string::npos);
    CHECK(messages[0].find("is it up?") != std::string::npos);

    // The guest keeps sending (its frames fail on the vCPU's thread under the NIC's lock) while
    // the announcer runs its rounds (asking the NIC for its address, failing too).
    guest.transmit(arp_request(k_mac, k_guest_ipv4, k_gateway_ipv4));
    guest.transmitted();
    {
        Watchdog watchdog("announcing while the guest sends onto a tap that is down", 60s);
        network->announce();
        auto deadline = std::chrono::steady_clock::now() + scaled(k_deadline);
        while (network->announcements() < GuestNetwork::k_announce_rounds &&
               std::chrono::steady_clock::now() < deadline) {
            guest.transmit(make_frame(60, 3));
            guest.transmitted();
        }
    }
    CHECK(network->announcements() == GuestNetwork::k_announce_rounds);
    CHECK(log.errors() == 1);  // further failures are not logged

    // Up again: frames flow.
    NetnsScope::sh(fmt::format("ip link set {} up", k_tap));
    PacketSocket host(k_tap);
    auto c = make_frame(100, 4);
    guest.transmit(c);
    CHECK(host.receive(is_test_frame) == c);
    network.reset();
}
