// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/console_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "core/console.h"

namespace colod::daemons {

namespace {

using Clock = std::chrono::steady_clock;

// Once stdin has ended, the console's output is copied until it has been quiet this long (the
// guest's answer to the last line may still be on its way: a protected primary releases it at
// the next checkpoint), but no longer than k_linger_limit in all.
constexpr auto k_quiet = std::chrono::seconds(2);
constexpr auto k_linger_limit = std::chrono::seconds(30);

// The terminal on a file descriptor in raw mode for as long as this object lives.
class RawTerminal {
public:
    static base::Result<RawTerminal> enter(int fd) {
        termios saved{};
        if (::tcgetattr(fd, &saved) < 0)
            return base::Error::from_errno("tcgetattr");
        termios raw = saved;
        ::cfmakeraw(&raw);
        // Output keeps the terminal's processing, so that a guest that ends its lines with a
        // bare newline (the embedded guest does) still starts each line at the left edge.
        raw.c_oflag = saved.c_oflag;
        if (::tcsetattr(fd, TCSADRAIN, &raw) < 0)
            return base::Error::from_errno("tcsetattr");
        return RawTerminal(fd, saved);
    }
    RawTerminal(RawTerminal&& other) noexcept : m_fd(std::exchange(other.m_fd, -1)), m_saved(other.m_saved) {}
    RawTerminal& operator=(RawTerminal&&) = delete;
    ~RawTerminal() {
        if (m_fd >= 0)
            ::tcsetattr(m_fd, TCSADRAIN, &m_saved);
    }

private:
    RawTerminal(int fd, const termios& saved) : m_fd(fd), m_saved(saved) {}
    int m_fd;
    termios m_saved;
};

// The signals that end a session, blocked (and read from a signalfd) for as long as this
// object lives, so that the terminal is restored before the process goes.
class SessionSignals {
public:
    SessionSignals() {
        sigemptyset(&m_set);
        for (int signal : {SIGINT, SIGTERM, SIGHUP, SIGQUIT})
            sigaddset(&m_set, signal);
        ::pthread_sigmask(SIG_BLOCK, &m_set, &m_old);
        m_fd = base::Fd(::signalfd(-1, &m_set, SFD_CLOEXEC | SFD_NONBLOCK));
    }
    SessionSignals(const SessionSignals&) = delete;
    SessionSignals& operator=(const SessionSignals&) = delete;
    ~SessionSignals() { ::pthread_sigmask(SIG_SETMASK, &m_old, nullptr); }

    const base::Fd& fd() const { return m_fd; }

private:
    sigset_t m_set{};
    sigset_t m_old{};
    base::Fd m_fd;
};

// Writes all of `data` to a blocking descriptor; false (errno set) if it cannot.
bool write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

base::Result<base::Fd> connect_unix(const std::filesystem::path& path) {
    sockaddr_un address = TRY(core::unix_socket_address(path, "console socket"));
    base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd)
        return base::Error::from_errno("socket(AF_UNIX)");
    // SAFETY: address is a filled sockaddr_un.
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0)
        return fd;
    const int err = errno;
    if (err == EACCES || err == EPERM)
        return base::Error(base::Errc::System,
                           fmt::format("{}: permission denied: the console socket is mode 0600, only the daemon's "
                                       "user (root under the systemd units) may use it; run coloctl as that user",
                                       path.string()),
                           err);
    if (err == ENOENT || err == ECONNREFUSED)
        return base::Error(base::Errc::System,
                           fmt::format("{}: {}: is the daemon running, and does it run the guest? (a standby opens "
                                       "its console when it takes over)",
                                       path.string(), std::strerror(err)),
                           err);
    return base::Error::from_errno("connect " + path.string(), err);
}

base::Result<base::Fd> connect_tcp(const config::Endpoint& endpoint) {
    const bool v6 = endpoint.family == config::AddressFamily::Ipv6;
    // A console on every address of the host is reached here over loopback.
    const std::string host = !endpoint.is_wildcard() ? endpoint.host : v6 ? "::1" : "127.0.0.1";
    sockaddr_storage storage{};
    socklen_t length = 0;
    if (v6) {
        auto* address = reinterpret_cast<sockaddr_in6*>(&storage);
        address->sin6_family = AF_INET6;
        address->sin6_port = htons(endpoint.port);
        if (::inet_pton(AF_INET6, host.c_str(), &address->sin6_addr) != 1)
            return base::Error::make(base::Errc::Invalid, "'{}' is not a numeric IPv6 address", host);
        length = sizeof(sockaddr_in6);
    } else {
        auto* address = reinterpret_cast<sockaddr_in*>(&storage);
        address->sin_family = AF_INET;
        address->sin_port = htons(endpoint.port);
        if (::inet_pton(AF_INET, host.c_str(), &address->sin_addr) != 1)
            return base::Error::make(base::Errc::Invalid, "'{}' is not a numeric IPv4 address", host);
        length = sizeof(sockaddr_in);
    }
    base::Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd)
        return base::Error::from_errno("socket");
    // SAFETY: storage holds a sockaddr_in or sockaddr_in6 of `length` bytes.
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) == 0)
        return fd;
    const int err = errno;
    const std::string where =
        v6 ? fmt::format("[{}]:{}", host, endpoint.port) : fmt::format("{}:{}", host, endpoint.port);
    if (err == ECONNREFUSED)
        return base::Error(base::Errc::System,
                           fmt::format("{}: {}: is the daemon running, and does it run the guest? (a standby opens "
                                       "its console when it takes over)",
                                       where, std::strerror(err)),
                           err);
    return base::Error::from_errno("connect " + where, err);
}

}  // namespace

base::Result<base::Fd> connect_console(const config::ConsoleAddress& address) {
    if (address.is_unix())
        return connect_unix(address.unix_path);
    return connect_tcp(address.tcp);
}

base::Result<ConsoleEnd> attach_console(base::Fd console) {
    // A reader of our stdout that goes away ends the session (EPIPE), not the process.
    ::signal(SIGPIPE, SIG_IGN);
    SessionSignals signals;  // declared before the terminal: restored after it
    if (!signals.fd())
        return base::Error::from_errno("signalfd");
    const bool terminal = ::isatty(STDIN_FILENO) == 1;
    std::optional<RawTerminal> raw;
    if (terminal)
        raw.emplace(TRY(RawTerminal::enter(STDIN_FILENO)));

    std::string pending;  // input the console has not taken yet
    bool input_open = true;
    Clock::time_point input_ended;
    Clock::time_point last_activity;  // after input_ended: the last output, or when pending emptied
    char buffer[4096];
    for (;;) {
        pollfd fds[3] = {
            {signals.fd().get(), POLLIN, 0},
            {console.get(), static_cast<short>(POLLIN | (pending.empty() ? 0 : POLLOUT)), 0},
            {input_open && pending.empty() ? STDIN_FILENO : -1, POLLIN, 0},
        };
        int timeout_ms = -1;
        if (!input_open && pending.empty()) {
            const auto deadline = std::min(last_activity + k_quiet, input_ended + k_linger_limit);
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
            if (left <= 0)
                return ConsoleEnd::InputEnded;
            timeout_ms = static_cast<int>(left);
        }
        if (::poll(fds, 3, timeout_ms) < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno("poll");
        }
        if (fds[0].revents) {
            // Taken here, the signal is not delivered again once the mask is restored.
            signalfd_siginfo info{};
            while (::read(signals.fd().get(), &info, sizeof(info)) == static_cast<ssize_t>(sizeof(info))) {
            }
            return ConsoleEnd::Detached;
        }

        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::recv(console.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                return ConsoleEnd::ConsoleClosed;
            if (n > 0) {
                if (!write_all(STDOUT_FILENO, std::string_view(buffer, static_cast<size_t>(n)))) {
                    if (errno == EPIPE)
                        return ConsoleEnd::Detached;
                    return base::Error::from_errno("writing to stdout");
                }
                last_activity = Clock::now();
            }
        }
        if ((fds[1].revents & POLLOUT) && !pending.empty()) {
            ssize_t n = ::send(console.get(), pending.data(), pending.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return ConsoleEnd::ConsoleClosed;
            if (n > 0)
                pending.erase(0, static_cast<size_t>(n));
            if (pending.empty())
                last_activity = Clock::now();
        }

        if (fds[2].revents) {
            ssize_t n = ::read(STDIN_FILENO, buffer, sizeof(buffer));
            if (n < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (n <= 0) {
                input_open = false;  // the end of the input, or a terminal that hung up
                input_ended = last_activity = Clock::now();
                continue;
            }
            std::string_view input(buffer, static_cast<size_t>(n));
            if (!terminal) {
                pending.append(input);
                continue;
            }
            const size_t escape = input.find(k_console_escape);
            // Enter sends a carriage return in raw mode; the console takes a line at its newline.
            for (char c : input.substr(0, escape))
                pending += c == '\r' ? '\n' : c;
            if (escape != std::string_view::npos) {
                [[maybe_unused]] ssize_t sent =
                    ::send(console.get(), pending.data(), pending.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
                return ConsoleEnd::Detached;
            }
        }
    }
}

}  // namespace colod::daemons
