// SPDX-License-Identifier: GPL-2.0-or-later
// Tap and TapReader against real tap interfaces, each test in a network namespace of its own
// (made with unshare(2) for the test's thread and left on destruction, so the namespace and
// every interface in it vanish with the last file descriptor, whatever the test did). Frames
// reach the host's side of the tap through an AF_PACKET socket bound to it. Needs root; skips
// with a warning otherwise.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/fd.h"
#include "core/net/tap.h"
#include "tests/support/frame_builder.h"
#include "tests/support/netns.h"

using namespace colod;
using namespace colod::core::net;
using colod::test::NetnsScope;
using colod::test::PacketSocket;
using colod::test::VnetPacketSocket;
namespace frames = colod::test::frames;
using Frame = std::vector<std::byte>;
using namespace std::chrono_literals;

namespace {

bool root_or_skip() { return test::root_or_skip("the tap tests"); }

// A frame of the local experimental EtherType with a payload marked by `tag`.
Frame test_frame(uint8_t tag, size_t len = 100) {
    Frame f(len, std::byte{0});
    for (int i = 0; i < 6; ++i)
        f[i] = std::byte{0xff};
    const uint8_t src[6] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x42};
    for (int i = 0; i < 6; ++i)
        f[6 + i] = std::byte{src[i]};
    f[12] = std::byte{0x88};
    f[13] = std::byte{0xb5};
    for (size_t i = 14; i < len; ++i)
        f[i] = std::byte(static_cast<uint8_t>(tag + i));
    return f;
}

bool is_test_frame(std::span<const std::byte> f) {
    return f.size() >= 14 && f[12] == std::byte{0x88} && f[13] == std::byte{0xb5};
}

// The next test frame read from `tap` within a few seconds.
std::optional<Frame> read_test_frame(Tap& tap) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    Frame buffer(Tap::k_max_frame);
    while (std::chrono::steady_clock::now() < deadline) {
        struct pollfd pfd = {tap.fd(), POLLIN, 0};
        ::poll(&pfd, 1, 100);
        auto got = tap.read(buffer);
        REQUIRE(got);
        if (got.value() && is_test_frame(std::span(buffer).first(got.value()->length))) {
            CHECK(got.value()->header == VnetHeader{});  // nothing left to do: no offloads set
            return Frame(buffer.begin(), buffer.begin() + static_cast<long>(got.value()->length));
        }
    }
    return std::nullopt;
}

bool mentions(const base::Error& error, std::string_view text) {
    UNSCOPED_INFO(error.message());
    return error.message().find(text) != std::string::npos;
}

const auto k_sysfs_modes = {NetnsScope::Sysfs::Host, NetnsScope::Sysfs::Private};

}  // namespace

TEST_CASE("a tap carries frames both ways: write() to the host, read() from it") {
    if (!root_or_skip())
        return;
    for (auto sysfs : k_sysfs_modes) {
        NetnsScope ns(sysfs);
        NetnsScope::sh("ip tuntap add dev ctap0 mode tap");
        auto tap = Tap::open("ctap0");
        REQUIRE(tap);
        CHECK(tap->name() == "ctap0");
        CHECK(::fcntl(tap->fd(), F_GETFD) & FD_CLOEXEC);
        CHECK(::fcntl(tap->fd(), F_GETFL) & O_NONBLOCK);
        NetnsScope::sh("ip link set ctap0 up");
        PacketSocket host("ctap0");

        // Nothing waiting: nullopt, not an error, and no blocking.
        Frame buffer(Tap::k_max_frame);
        auto none = tap->read(buffer);
        REQUIRE(none);

        // Guest -> host.
        auto out = test_frame(1);
        REQUIRE(tap->write(out));
        CHECK(host.receive(is_test_frame) == out);
        auto big = test_frame(2, 1514);
        REQUIRE(tap->write(big));
        CHECK(host.receive(is_test_frame) == big);
        CHECK(tap->dropped() == 0);

        // Host -> guest.
        auto in = test_frame(3, 60);
        host.send(in);
        CHECK(read_test_frame(*tap) == in);

        // A buffer too small for the frame is an error, not a silently cut frame.
        host.send(test_frame(4, 1000));
        Frame small(100);
        bool refused = false;
        for (int i = 0; i < 500 && !refused; ++i) {
            struct pollfd pfd = {tap->fd(), POLLIN, 0};
            ::poll(&pfd, 1, 10);
            auto got = tap->read(small);
            refused = !got;
        }
        CHECK(refused);

        // Errors: no Ethernet frame; a tap that is down.
        auto runt = tap->write(std::span(out).first(10));
        REQUIRE_FALSE(runt);
        CHECK(mentions(runt.error(), "ctap0"));
        NetnsScope::sh("ip link set ctap0 down");
        auto down = tap->write(out);
        REQUIRE_FALSE(down);
        CHECK(mentions(down.error(), "is it up?"));
    }
}

namespace {

constexpr size_t k_tcp_at = 14 + 20;

// One TCP/IPv4 segment of `payload` bytes as a host's TCP stack hands it to a device that
// segments and checksums.
Frame tcp_segment(size_t payload) {
    const frames::Host4 from{{0x02, 0, 0, 0, 0, 0x42}, 0x0a090001, 12345};
    const frames::Host4 to{{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 0x0a090002, 80};
    return frames::tcp4_unfinished(from, to, {1, 1, frames::k_ack, 65535, std::string(payload, 'x')});
}

bool is_tcp_frame(std::span<const std::byte> f) {
    return f.size() > k_tcp_at + 20 && f[12] == std::byte{0x08} && f[13] == std::byte{0x00} && f[14 + 9] == std::byte{6};
}

// The TCP frames `tap` hands over until `count` came or a few seconds passed.
std::vector<std::pair<VnetHeader, Frame>> read_tcp_frames(Tap& tap, size_t count) {
    std::vector<std::pair<VnetHeader, Frame>> got;
    auto deadline = std::chrono::steady_clock::now() + 5s;
    Frame buffer(Tap::k_max_frame);
    while (got.size() < count && std::chrono::steady_clock::now() < deadline) {
        struct pollfd pfd = {tap.fd(), POLLIN, 0};
        ::poll(&pfd, 1, 100);
        auto read = tap.read(buffer);
        REQUIRE(read);
        if (read.value() && is_tcp_frame(std::span(buffer).first(read.value()->length)))
            got.emplace_back(read.value()->header, Frame(buffer.begin(), buffer.begin() + static_cast<long>(read.value()->length)));
    }
    return got;
}

}  // namespace

TEST_CASE("a tap hands a host's 64 KiB TCP segment over whole once offloads are set, and in checksummed segments before") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Private);
    NetnsScope::sh("ip tuntap add dev ctap0 mode tap");
    auto tap = Tap::open("ctap0");
    REQUIRE(tap);
    NetnsScope::sh("ip link set ctap0 up");
    VnetPacketSocket host("ctap0");

    constexpr size_t k_mss = 1000, k_segments = 7;
    auto segment = tcp_segment(k_mss * k_segments - 300);  // the last piece shorter
    VnetHeader gso;
    gso.flags = VnetHeader::k_needs_csum;
    gso.gso_type = VnetHeader::k_gso_tcpv4;
    gso.hdr_len = k_tcp_at + 20;
    gso.gso_size = k_mss;
    gso.csum_start = k_tcp_at;
    gso.csum_offset = 16;

    // No offloads (as opened): the host cuts it and computes every checksum; nothing left to do.
    host.send(gso, segment);
    auto pieces = read_tcp_frames(*tap, k_segments);
    REQUIRE(pieces.size() == k_segments);
    size_t payload = 0;
    for (const auto& [header, frame] : pieces) {
        CHECK(header == VnetHeader{});
        CHECK(frame.size() <= k_tcp_at + 20 + k_mss);
        CHECK(frames::tcp_checksum_valid(frame));
        payload += frame.size() - k_tcp_at - 20;
    }
    CHECK(payload == segment.size() - k_tcp_at - 20);

    // Checksum and TSO offloads: it comes whole, its checksum to finish, as the header says.
    REQUIRE(tap->set_offloads(Tap::k_offload_csum | Tap::k_offload_tso4));
    host.send(gso, segment);
    auto whole = read_tcp_frames(*tap, 1);
    REQUIRE(whole.size() == 1);
    CHECK(whole[0].second == segment);
    CHECK(whole[0].first.gso_type == VnetHeader::k_gso_tcpv4);
    CHECK(whole[0].first.gso_size == k_mss);
    CHECK(whole[0].first.flags == VnetHeader::k_needs_csum);
    CHECK(whole[0].first.csum_start == k_tcp_at);
    CHECK(whole[0].first.csum_offset == 16);

    // Checksums only: cut again, each piece's checksum left to finish.
    REQUIRE(tap->set_offloads(Tap::k_offload_csum));
    host.send(gso, segment);
    pieces = read_tcp_frames(*tap, k_segments);
    REQUIRE(pieces.size() == k_segments);
    for (auto& [header, frame] : pieces) {
        CHECK(header.gso_type == VnetHeader::k_gso_none);
        CHECK(header.flags == VnetHeader::k_needs_csum);
        REQUIRE(complete_checksum(frame, header.csum_start, header.csum_offset));
        CHECK(frames::tcp_checksum_valid(frame));
    }

    // TSO without checksums is not asked of the tap: it cuts.
    REQUIRE(tap->set_offloads(Tap::k_offload_tso4));
    host.send(gso, segment);
    CHECK(read_tcp_frames(*tap, k_segments).size() == k_segments);

    // A new Tap on the same interface starts without the offloads the last one set.
    REQUIRE(tap->set_offloads(Tap::k_offload_csum | Tap::k_offload_tso4));
    tap = base::Result<Tap>(base::Error(base::Errc::Invalid, "closed"));
    auto again = Tap::open("ctap0");
    REQUIRE(again);
    host.send(gso, segment);
    CHECK(read_tcp_frames(*again, k_segments).size() == k_segments);
}

TEST_CASE("TapReader hands every frame to its function until stop()") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    NetnsScope::sh("ip tuntap add dev ctap0 mode tap");
    auto tap = Tap::open("ctap0");
    REQUIRE(tap);
    NetnsScope::sh("ip link set ctap0 up");
    PacketSocket host("ctap0");

    std::mutex mutex;
    std::condition_variable arrived;
    std::vector<Frame> frames;
    auto reader = TapReader::start(*tap, [&](const VnetHeader&, std::span<const std::byte> frame) {
        if (!is_test_frame(frame))
            return;
        std::lock_guard lock(mutex);
        frames.emplace_back(frame.begin(), frame.end());
        arrived.notify_all();
    });
    REQUIRE(reader);
    constexpr int k_count = 50;
    std::vector<Frame> sent;
    for (int i = 0; i < k_count; ++i) {
        sent.push_back(test_frame(static_cast<uint8_t>(i), 60 + static_cast<size_t>(i)));
        host.send(sent.back());
    }
    {
        std::unique_lock lock(mutex);
        CHECK(arrived.wait_for(lock, 10s, [&] { return frames.size() == k_count; }));
        CHECK(frames == sent);
    }
    reader.value()->stop();
    reader.value()->stop();  // idempotent
    CHECK(!reader.value()->failure());
    // Once stopped, frames stay on the tap for whoever reads next.
    auto later = test_frame(99);
    host.send(later);
    CHECK(read_test_frame(*tap) == later);
    std::lock_guard lock(mutex);
    CHECK(frames.size() == k_count);
}

TEST_CASE("TapReader: destruction stops it; a deleted interface ends it with failure()") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Host);
    NetnsScope::sh("ip tuntap add dev ctap0 mode tap");
    auto tap = Tap::open("ctap0");
    REQUIRE(tap);
    {
        auto idle = TapReader::start(*tap, [](const VnetHeader&, std::span<const std::byte>) {});
        REQUIRE(idle);
    }  // returns: the thread woke up and ended
    auto reader = TapReader::start(*tap, [](const VnetHeader&, std::span<const std::byte>) {});
    REQUIRE(reader);
    NetnsScope::sh("ip link del ctap0");
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!reader.value()->failure() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    auto failure = reader.value()->failure();
    REQUIRE(failure);
    CHECK(mentions(*failure, "ctap0"));
    reader.value()->stop();
}

TEST_CASE("Tap::open refuses a missing interface, naming it and how to create it, and creates none") {
    if (!root_or_skip())
        return;
    for (auto sysfs : k_sysfs_modes) {
        NetnsScope ns(sysfs);
        auto missing = Tap::open("cnotap0");
        REQUIRE_FALSE(missing);
        CHECK(mentions(missing.error(), "no network interface 'cnotap0'"));
        CHECK(mentions(missing.error(), "ip tuntap add dev cnotap0 mode tap"));
        CHECK(::if_nametoindex("cnotap0") == 0);
    }
}

TEST_CASE("Tap::open refuses interfaces that are not taps: loopback, veth, tun, a multi-queue tap") {
    if (!root_or_skip())
        return;
    for (auto sysfs : k_sysfs_modes) {
        NetnsScope ns(sysfs);
        NetnsScope::sh("ip link add cveth0 type veth peer name cveth1");
        NetnsScope::sh("ip tuntap add dev ctun0 mode tun");
        NetnsScope::sh("ip tuntap add dev cmq0 mode tap multi_queue");
        for (const char* name : {"lo", "cveth0", "ctun0", "cmq0"}) {
            INFO(name << (sysfs == NetnsScope::Sysfs::Private ? " (sysfs of the namespace)" : " (sysfs of the host)"));
            auto opened = Tap::open(name);
            REQUIRE_FALSE(opened);
            CHECK(mentions(opened.error(), fmt::format("'{}'", name)));
            CHECK((mentions(opened.error(), "not a tap") || mentions(opened.error(), "not a single-queue tap")));
        }
    }
}

TEST_CASE("a tap another process (or another Tap) holds is refused as in use; free again once closed") {
    if (!root_or_skip())
        return;
    NetnsScope ns(NetnsScope::Sysfs::Private);
    NetnsScope::sh("ip tuntap add dev ctap0 mode tap");
    {
        auto first = Tap::open("ctap0");
        REQUIRE(first);
        auto second = Tap::open("ctap0");
        REQUIRE_FALSE(second);
        CHECK(mentions(second.error(), "'ctap0' is in use"));
        // Moving the owner keeps the interface attached.
        Tap moved = std::move(first.value());
        CHECK(moved.fd() >= 0);
        CHECK_FALSE(Tap::open("ctap0"));
    }
    auto again = Tap::open("ctap0");
    CHECK(again);
}

TEST_CASE("Tap::open refuses names Linux cannot have") {
    // No root needed: refused before anything is looked up.
    auto long_name = Tap::open("abcdefghijklmnop");
    REQUIRE_FALSE(long_name);
    CHECK(mentions(long_name.error(), "16 characters"));
    CHECK(mentions(long_name.error(), "at most 15"));
    for (const char* bad : {"", ".", "..", "a/b", "a b", "a:b"}) {
        INFO("'" << bad << "'");
        auto opened = Tap::open(bad);
        REQUIRE_FALSE(opened);
        CHECK(mentions(opened.error(), "not a valid network interface name"));
    }
}
