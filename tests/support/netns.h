// SPDX-License-Identifier: GPL-2.0-or-later
// Tests with real network interfaces, each in a network namespace of its own (made with
// unshare(2) for the test's thread and left on destruction, so that the namespace and every
// interface in it vanish with the last file descriptor, whatever the test did), and the
// host's side of a tap as an AF_PACKET socket bound to it. They need root and skip with a
// warning otherwise.
#pragma once

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
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/fd.h"
#include "core/net/vnet_header.h"
#include "tests/support/backend.h"

namespace colod::test {

// True as root; otherwise warns that `what` is skipped.
inline bool root_or_skip(const std::string& what) {
    if (::geteuid() == 0)
        return true;
    WARN("SKIPPED: " << what << " need root (network namespaces and tap interfaces)");
    return false;
}

// The test's thread in a new network namespace until destruction. With Sysfs::Private also
// in a new mount namespace with sysfs mounted for the new network namespace (what `ip netns
// exec` does), so that /sys/class/net shows its interfaces; with Sysfs::Host, /sys still shows
// the host's. Threads the test starts afterwards inherit the namespaces.
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

// The host's side of a tap: raw frames in and out of the interface `name`, which must exist.
//
// send() bypasses the interface's queueing discipline (PACKET_QDISC_BYPASS): the frame is
// handed to the tap's driver within the call, so once send() returns it waits in the tap's
// queue for whoever reads the tap (or it was dropped because no one is attached).
class PacketSocket {
public:
    using Accept = std::function<bool(std::span<const std::byte>)>;

    explicit PacketSocket(const std::string& name) {
        m_fd = base::Fd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
        REQUIRE(m_fd);
        int one = 1;
        REQUIRE(::setsockopt(m_fd.get(), SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof(one)) == 0);
        struct sockaddr_ll addr {};
        addr.sll_family = AF_PACKET;
        addr.sll_protocol = htons(ETH_P_ALL);
        addr.sll_ifindex = static_cast<int>(::if_nametoindex(name.c_str()));
        REQUIRE(addr.sll_ifindex != 0);
        REQUIRE(::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    }
    void send(std::span<const std::byte> frame) { REQUIRE(try_send(frame)); }
    // send() for threads other than the test's (Catch2's assertions are not thread-safe):
    // false when the frame was not taken.
    bool try_send(std::span<const std::byte> frame) {
        return ::send(m_fd.get(), frame.data(), frame.size(), 0) == static_cast<ssize_t>(frame.size());
    }
    // The next frame the tap's owner wrote (what the host receives from the interface, not
    // what the host sends into it) that `accept` takes, or nothing within `limit` (scaled by
    // COLOD_TEST_TIME_SCALE). Frames it does not take, such as the kernel's IPv6 router
    // solicitations, are skipped.
    std::optional<std::vector<std::byte>> receive(const Accept& accept,
                                                  std::chrono::milliseconds limit = std::chrono::seconds(5)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(limit);
        std::vector<std::byte> buffer(70000);
        for (;;) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return std::nullopt;
            struct pollfd pfd = {m_fd.get(), POLLIN, 0};
            if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0)
                continue;
            struct sockaddr_ll from {};
            socklen_t from_len = sizeof(from);
            ssize_t n = ::recvfrom(m_fd.get(), buffer.data(), buffer.size(), MSG_DONTWAIT,
                                   reinterpret_cast<sockaddr*>(&from), &from_len);
            if (n <= 0 || from.sll_pkttype == PACKET_OUTGOING)
                continue;
            auto frame = std::span<const std::byte>(buffer).first(static_cast<size_t>(n));
            if (accept(frame))
                return std::vector<std::byte>(frame.begin(), frame.end());
        }
    }

private:
    base::Fd m_fd;
};

// The host's side sending with a virtio-net header of its own (PACKET_VNET_HDR): what a host's
// TCP stack hands a device, a 64 KiB segment with its checksum to finish.
class VnetPacketSocket {
public:
    explicit VnetPacketSocket(const std::string& name) : m_name(name) {
        m_fd = base::Fd(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
        REQUIRE(m_fd);
        int one = 1;
        REQUIRE(::setsockopt(m_fd.get(), SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) == 0);
        struct sockaddr_ll addr {};
        addr.sll_family = AF_PACKET;
        addr.sll_ifindex = static_cast<int>(::if_nametoindex(name.c_str()));
        REQUIRE(addr.sll_ifindex != 0);
        REQUIRE(::bind(m_fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    }
    // PACKET_VNET_HDR's header is struct virtio_net_hdr: VnetHeader's without num_buffers.
    // Frames go through the interface's qdisc (the one place the kernel cuts a segment for a
    // tap without TSO), which a tap gets only some time after its carrier came up (when a
    // reader attached): until then it is "noop" and drops them, so the first send waits for it
    // (a condition with no event to wait on: looked at every 10 ms).
    void send(const core::net::VnetHeader& header, std::span<const std::byte> frame) {
        if (!m_qdisc_ready) {
            auto deadline = std::chrono::steady_clock::now() + scaled(std::chrono::seconds(10));
            while (!(m_qdisc_ready = qdisc_active()) && std::chrono::steady_clock::now() < deadline)
                ::usleep(10000);
            REQUIRE(m_qdisc_ready);
        }
        auto bytes = header.encode();
        struct iovec parts[2] = {{bytes.data(), 10}, {const_cast<std::byte*>(frame.data()), frame.size()}};
        REQUIRE(::writev(m_fd.get(), parts, 2) == static_cast<ssize_t>(10 + frame.size()));
    }

private:
    bool qdisc_active() const {
        FILE* pipe = ::popen(("ip link show dev " + m_name + " 2>/dev/null").c_str(), "r");
        if (!pipe)
            return false;
        std::string out;
        char chunk[512];
        while (size_t n = std::fread(chunk, 1, sizeof(chunk), pipe))
            out.append(chunk, n);
        ::pclose(pipe);
        return !out.empty() && out.find("qdisc noop") == std::string::npos;
    }

    base::Fd m_fd;
    std::string m_name;
    bool m_qdisc_ready = false;
};

}  // namespace colod::test
