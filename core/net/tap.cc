// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/net/tap.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string_view>

#include "base/log.h"
#include "base/thread_name.h"

namespace colod::core::net {

namespace {

std::string create_hint(const std::string& name) {
    return fmt::format("create it with `ip tuntap add dev {} mode tap` (add `user USER` if colod does not run as root)",
                       name);
}

// The first line of a sysfs attribute, or nothing if it cannot be read.
std::optional<std::string> sysfs_attribute(const std::string& name, std::string_view attribute) {
    std::ifstream in(fmt::format("/sys/class/net/{}/{}", name, attribute));
    std::string line;
    if (!in || !std::getline(in, line))
        return std::nullopt;
    return line;
}

// The interface's hardware address as sysfs writes it ("52:54:00:12:34:56"), asked of the
// kernel for our own network namespace; nothing if it cannot be had.
std::optional<std::string> hardware_address(const std::string& name) {
    base::Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!sock)
        return std::nullopt;
    // SAFETY: struct ifreq is plain data; the name fits with its NUL (checked by the caller);
    // SIOCGIFHWADDR fills ifr_hwaddr only.
    struct ifreq request;
    std::memset(&request, 0, sizeof(request));
    std::memcpy(request.ifr_name, name.data(), name.size());
    if (::ioctl(sock.get(), SIOCGIFHWADDR, &request) < 0)
        return std::nullopt;
    const auto* a = reinterpret_cast<const unsigned char*>(request.ifr_hwaddr.sa_data);
    return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", a[0], a[1], a[2], a[3], a[4], a[5]);
}

enum class Kind { Tap, Tun, Other };

// What sysfs says `name` is, or nothing when it cannot tell: sysfs shows the network namespace
// of whoever mounted it, which after a bare unshare(CLONE_NEWNET) is not ours, so its entry is
// believed only if index and hardware address match what the kernel says of our interface.
// TUNSETIFF decides when sysfs cannot.
std::optional<Kind> sysfs_kind(const std::string& name, unsigned index) {
    auto sysfs_index = sysfs_attribute(name, "ifindex");
    auto sysfs_address = sysfs_attribute(name, "address");
    if (!sysfs_index || *sysfs_index != std::to_string(index) || !sysfs_address)
        return std::nullopt;
    auto address = hardware_address(name);
    if (!address || sysfs_address->substr(0, address->size()) != *address)
        return std::nullopt;
    auto flags = sysfs_attribute(name, "tun_flags");  // only tun and tap interfaces have it
    if (!flags)
        return Kind::Other;
    char* end = nullptr;
    unsigned long value = std::strtoul(flags->c_str(), &end, 16);
    if (end == flags->c_str())
        return std::nullopt;
    return (value & IFF_TAP) ? Kind::Tap : Kind::Tun;
}

// The names Linux accepts (dev_valid_name()): this also keeps `name` a single sysfs path element.
bool valid_interface_name(const std::string& name) {
    if (name.empty() || name == "." || name == "..")
        return false;
    for (char c : name)
        if (c == '/' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == '\0')
            return false;
    return true;
}

}  // namespace

Tap::Tap(Tap&& other) noexcept
    : m_fd(std::move(other.m_fd)), m_name(std::move(other.m_name)), m_dropped(other.m_dropped.load(std::memory_order_relaxed)) {}

Tap& Tap::operator=(Tap&& other) noexcept {
    if (this != &other) {
        m_fd = std::move(other.m_fd);
        m_name = std::move(other.m_name);
        m_dropped.store(other.m_dropped.load(std::memory_order_relaxed), std::memory_order_relaxed);
    }
    return *this;
}

base::Result<Tap> Tap::open(const std::string& name) {
    if (name.size() > IFNAMSIZ - 1)
        return base::Error::make(base::Errc::Invalid, "tap interface name '{}' is {} characters long; Linux allows at most {}",
                                 name, name.size(), IFNAMSIZ - 1);
    if (!valid_interface_name(name))
        return base::Error::make(base::Errc::Invalid, "'{}' is not a valid network interface name", name);

    // TUNSETIFF would create a missing interface (we may hold CAP_NET_ADMIN): look first.
    unsigned index = ::if_nametoindex(name.c_str());
    if (index == 0) {
        if (errno != ENODEV && errno != ENXIO)
            return base::Error::from_errno(fmt::format("looking up network interface '{}'", name));
        return base::Error::make(base::Errc::Invalid, "there is no network interface '{}': {}", name, create_hint(name));
    }
    auto kind = sysfs_kind(name, index);
    if (kind == Kind::Tun)
        return base::Error::make(base::Errc::Invalid,
                                 "network interface '{}' is a tun interface (IP packets), not a tap (Ethernet frames); "
                                 "give colod a tap of its own: {}",
                                 name, create_hint("NAME"));
    if (kind == Kind::Other)
        return base::Error::make(base::Errc::Invalid,
                                 "network interface '{}' is not a tap interface; give colod a tap of its own: {}", name,
                                 create_hint("NAME"));

    base::Fd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!fd)
        return base::Error::from_errno("opening /dev/net/tun");
    // SAFETY: struct ifreq is plain data; the name fits with its NUL (checked above) and
    // TUNSETIFF/TUNGETIFF read and write only ifr_name and ifr_flags.
    struct ifreq request;
    std::memset(&request, 0, sizeof(request));
    std::memcpy(request.ifr_name, name.data(), name.size());
    // IFF_NO_PI: frames without the 4-byte packet information prefix; IFF_VNET_HDR: with a
    // virtio-net header instead (its size set below). IFF_ONE_QUEUE has been ignored since
    // Linux 3.8 (a tap's queue is its qdisc's) and is left out.
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (::ioctl(fd.get(), TUNSETIFF, &request) < 0) {
        int err = errno;
        switch (err) {
        case EBUSY:
            return base::Error(base::Errc::Invalid,
                               fmt::format("tap interface '{}' is in use: another process is attached to it (another "
                                           "colod or VMM for the same interface?)",
                                           name),
                               err);
        case EINVAL:
            return base::Error(base::Errc::Invalid,
                               fmt::format("network interface '{}' is not a single-queue tap interface; {}", name,
                                           create_hint(name)),
                               err);
        case EPERM:
            return base::Error(base::Errc::System,
                               fmt::format("not permitted to attach to tap interface '{}': it belongs to another user or "
                                           "group (`ip tuntap add dev {} mode tap user USER`), or CAP_NET_ADMIN is "
                                           "missing",
                                           name, name),
                               err);
        default:
            return base::Error::from_errno(fmt::format("attaching to tap interface '{}' (TUNSETIFF)", name), err);
        }
    }
    // An interface that existed when we looked and has a single queue free is persistent (a
    // non-persistent one goes away with its one queue). Without IFF_PERSIST, it was deleted
    // in between and TUNSETIFF made a new one, which closing the fd deletes again.
    std::memset(&request.ifr_ifru, 0, sizeof(request.ifr_ifru));
    if (::ioctl(fd.get(), TUNGETIFF, &request) < 0)
        return base::Error::from_errno(fmt::format("tap interface '{}' (TUNGETIFF)", name));
    if (!(request.ifr_flags & IFF_PERSIST))
        return base::Error::make(base::Errc::Invalid, "there is no network interface '{}' (it was just deleted): {}", name,
                                 create_hint(name));
    // The header with num_buffers (struct virtio_net_hdr_v1), the guest NIC's own layout: the
    // tap fills the first ten bytes on read and reads them on write.
    int header_size = static_cast<int>(VnetHeader::k_size);
    if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &header_size) < 0)
        return base::Error::from_errno(fmt::format("tap interface '{}' (TUNSETVNETHDRSZ)", name));
    Tap tap(std::move(fd), name);
    // Offloads stay set on a persistent interface: another process's choice is not ours.
    TRY(tap.set_offloads(0));
    return tap;
}

base::Result<void> Tap::set_offloads(unsigned offloads) {
    unsigned long flags = 0;
    if (offloads & k_offload_csum) {
        flags |= TUN_F_CSUM;
        if (offloads & k_offload_tso4)
            flags |= TUN_F_TSO4;
        if (offloads & k_offload_tso6)
            flags |= TUN_F_TSO6;
    }
    if (::ioctl(m_fd.get(), TUNSETOFFLOAD, flags) < 0)
        return base::Error::from_errno(fmt::format("setting the offloads of tap '{}' to {:#x} (TUNSETOFFLOAD)", m_name, flags));
    return base::ok();
}

base::Result<void> Tap::write(std::span<const std::byte> frame) {
    static const std::array<std::byte, VnetHeader::k_size> k_plain = VnetHeader{}.encode();
    // SAFETY: writev() only reads the iovecs' bytes; the header's are never written.
    struct iovec parts[2] = {{const_cast<std::byte*>(k_plain.data()), k_plain.size()},
                             {const_cast<std::byte*>(frame.data()), frame.size()}};
    for (;;) {
        ssize_t n = ::writev(m_fd.get(), parts, 2);
        if (n >= 0) {
            n -= static_cast<ssize_t>(k_plain.size());
            if (n < 0 || static_cast<size_t>(n) != frame.size())
                return base::Error::make(base::Errc::System, "tap '{}': wrote {} bytes of a {}-byte frame", m_name, n,
                                         frame.size());
            return base::ok();
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN) {
            m_dropped.fetch_add(1, std::memory_order_relaxed);
            return base::ok();
        }
        if (errno == EIO)  // what a tap says while it is down
            return base::Error::from_errno(
                fmt::format("writing to tap '{}' (is it up? `ip link set {} up`)", m_name, m_name));
        return base::Error::from_errno(fmt::format("writing a {}-byte frame to tap '{}'", frame.size(), m_name));
    }
}

base::Result<std::optional<Tap::Received>> Tap::read(std::span<std::byte> buffer) {
    // A tap cuts a frame to the room it is given without saying so: one byte more shows
    // whether there was more.
    std::array<std::byte, VnetHeader::k_size> header{};
    std::byte overflow;
    struct iovec parts[3] = {{header.data(), header.size()}, {buffer.data(), buffer.size()}, {&overflow, 1}};
    for (;;) {
        ssize_t n = ::readv(m_fd.get(), parts, 3);
        if (n >= 0) {
            if (static_cast<size_t>(n) < header.size())
                return base::Error::make(base::Errc::System, "tap '{}': a read of {} bytes, shorter than its {}-byte header",
                                         m_name, n, header.size());
            size_t length = static_cast<size_t>(n) - header.size();
            if (length > buffer.size())
                return base::Error::make(base::Errc::Invalid, "tap '{}': a frame longer than the buffer of {} bytes", m_name,
                                         buffer.size());
            return std::optional<Received>(Received{length, VnetHeader::decode(header)});
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN)
            return std::optional<Received>();
        return base::Error::from_errno(fmt::format("reading from tap '{}'", m_name));
    }
}

base::Result<std::unique_ptr<TapReader>> TapReader::start(Tap& tap, Deliver deliver) {
    base::Fd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake)
        return base::Error::from_errno("eventfd for the tap reader");
    std::unique_ptr<TapReader> reader(new TapReader(tap, std::move(deliver), std::move(wake)));
    reader->m_thread = base::named_thread("tap-rx", [r = reader.get()] {
        r->run();
    });
    return reader;
}

TapReader::TapReader(Tap& tap, Deliver deliver, base::Fd wake)
    : m_tap(&tap), m_deliver(std::move(deliver)), m_wake(std::move(wake)) {}

TapReader::~TapReader() { stop(); }

void TapReader::stop() {
    std::lock_guard lock(m_join_mutex);
    m_stopping.store(true, std::memory_order_relaxed);
    uint64_t one = 1;
    // An eventfd write of 1 fails only if the counter would overflow; then it is readable anyway.
    [[maybe_unused]] ssize_t n = ::write(m_wake.get(), &one, sizeof(one));
    if (m_thread.joinable())
        m_thread.join();
}

std::optional<base::Error> TapReader::failure() const {
    std::lock_guard lock(m_failure_mutex);
    return m_failure;
}

void TapReader::run() {
    std::vector<std::byte> buffer(Tap::k_max_frame);
    auto fail = [&](base::Error error) {
        base::log(base::Level::Error, base::Event::Error,
                  fmt::format("tap '{}': no more frames for the guest: {}", m_tap->name(), error.message()));
        std::lock_guard lock(m_failure_mutex);
        m_failure = std::move(error);
    };
    while (!m_stopping.load(std::memory_order_relaxed)) {
        struct pollfd fds[2] = {{m_tap->fd(), POLLIN, 0}, {m_wake.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            fail(base::Error::from_errno("poll on the tap"));
            return;
        }
        if (fds[1].revents)
            return;
        if (!fds[0].revents)
            continue;
        // Every frame waiting, but stop() is heard between two frames.
        bool got_any = false;
        while (!m_stopping.load(std::memory_order_relaxed)) {
            auto frame = m_tap->read(buffer);
            if (!frame) {
                fail(std::move(frame).error());
                return;
            }
            if (!frame.value())
                break;
            got_any = true;
            m_deliver(frame.value()->header, std::span<const std::byte>(buffer.data(), frame.value()->length));
        }
        // An error condition that read() does not report would make poll() return at once
        // for ever: give up rather than spin.
        if (!got_any && (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL))) {
            fail(base::Error::make(base::Errc::System, "poll reports {:#x} on the tap", fds[0].revents));
            return;
        }
    }
}

}  // namespace colod::core::net
