// SPDX-License-Identifier: GPL-2.0-or-later
// Tap and TapReader against real tap interfaces, each test in a network namespace of its own
// (made with unshare(2) for the test's thread and left on destruction, so the namespace and
// every interface in it vanish with the last file descriptor, whatever the test did). Frames
// reach the host's side of the tap through an AF_PACKET socket bound to it. Needs root; skips
// with a warning otherwise.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/fd.h"
#include "core/net/tap.h"

using namespace colod;
using namespace colod::core::net;
using Frame = std::vector<std::byte>;
using namespace std::chrono_literals;

namespace {

bool root_or_skip() {
    if (::geteuid() == 0)
        return true;
    WARN("SKIPPED: the tap tests need root (network namespaces and tap interfaces)");
    return false;
}

// The test's thread in a new network namespace until destruction. With Sysfs::Private also
// in a new mount namespace with sysfs mounted for the new network namespace (what `ip netns
// exec` does), so that /sys/class/net shows its interfaces; with Sysfs::Host, /sys still shows
// the host's and Tap::open must not be misled by it.
class NetnsScope {
public:
    enum class Sysfs { Host, Private };
    explicit NetnsScope(Sysfs sysfs) {
        m_return.net = base::Fd(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
        REQUIRE(m_return.net);
        int flags = CLONE_NEWNET;
        if (sysfs == Sysfs::Private) {
            m_return.mnt = base::Fd(::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC));
            REQUIRE(m_return.mnt);
            flags |= CLONE_NEWNS;
        }
        int rc = ::unshare(flags);
        INFO("unshare: " << std::strerror(errno));
        REQUIRE(rc == 0);
        m_return.armed = true;
        if (sysfs == Sysfs::Private) {
            REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
            REQUIRE(::mount("sysfs", "/sys", "sysfs", 0, nullptr) == 0);
        }
        sh("ip link set lo up");
    }
    NetnsScope(const NetnsScope&) = delete;
    NetnsScope& operator=(const NetnsScope&) = delete;

    // A shell command, in the namespace (children inherit the thread's namespaces).
    static void sh(const std::string& command) {
        INFO(command);
        REQUIRE(std::system((command + " >/dev/null 2>&1").c_str()) == 0);
    }

private:
    // Back to the original namespaces, also when the constructor fails half-way.
    struct Return {
        base::Fd net, mnt;
        bool armed = false;
        ~Return() {
            if (!armed)
                return;
            // Failing here would run the rest of the test binary in the wrong namespace.
            if (mnt && ::setns(mnt.get(), CLONE_NEWNS) != 0)
                std::abort();
            if (::setns(net.get(), CLONE_NEWNET) != 0)
                std::abort();
        }
    };
    Return m_return;
};

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

// The host's side of a tap: raw frames in and out of the interface.
class PacketSocket {
public:
    explicit PacketSocket(const std::string& name) {
        m_fd = base::Fd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
        REQUIRE(m_fd);
        struct sockaddr_ll addr {};
        addr.sll_family = AF_PACKET;
        addr.sll_protocol = htons(ETH_P_ALL);
        addr.sll_ifindex = static_cast<int>(::if_nametoindex(name.c_str()));
        REQUIRE(addr.sll_ifindex != 0);
        REQUIRE(::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    }
    void send(std::span<const std::byte> frame) {
        REQUIRE(::send(m_fd.get(), frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size()));
    }
    // The next test frame that arrives, or nothing within `limit` (other traffic, such as the
    // kernel's IPv6 router solicitations, is skipped).
    std::optional<Frame> receive(std::chrono::milliseconds limit = 5000ms) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        Frame buffer(70000);
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return std::nullopt;
            struct pollfd pfd = {m_fd.get(), POLLIN, 0};
            if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
                continue;
            ssize_t n = ::recv(m_fd.get(), buffer.data(), buffer.size(), MSG_DONTWAIT);
            if (n > 0 && is_test_frame(std::span(buffer).first(static_cast<size_t>(n))))
                return Frame(buffer.begin(), buffer.begin() + n);
        }
    }

private:
    base::Fd m_fd;
};

// The next test frame read from `tap` within a few seconds.
std::optional<Frame> read_test_frame(Tap& tap) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    Frame buffer(Tap::k_max_frame);
    while (std::chrono::steady_clock::now() < deadline) {
        struct pollfd pfd = {tap.fd(), POLLIN, 0};
        ::poll(&pfd, 1, 100);
        auto got = tap.read(buffer);
        REQUIRE(got);
        if (got.value() && is_test_frame(std::span(buffer).first(*got.value())))
            return Frame(buffer.begin(), buffer.begin() + static_cast<long>(*got.value()));
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
        CHECK(host.receive() == out);
        auto big = test_frame(2, 1514);
        REQUIRE(tap->write(big));
        CHECK(host.receive() == big);
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
    auto reader = TapReader::start(*tap, [&](std::span<const std::byte> frame) {
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
        auto idle = TapReader::start(*tap, [](std::span<const std::byte>) {});
        REQUIRE(idle);
    }  // returns: the thread woke up and ended
    auto reader = TapReader::start(*tap, [](std::span<const std::byte>) {});
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
