// SPDX-License-Identifier: GPL-2.0-or-later
// Small helpers for tests that talk to colod over TCP (and to other programs over unix sockets).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "base/fd.h"
#include "tests/support/backend.h"

namespace colod::test {

// Waits for a condition that another thread or process makes true, checking it every
// millisecond until `timeout`. For conditions with no event to wait on (a process's state seen
// from outside).
inline bool eventually(const std::function<bool()>& condition,
                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
    while (std::chrono::steady_clock::now() < deadline) {
        if (condition())
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return condition();
}

// A line-oriented TCP client with deadlines.
class LineClient {
public:
    static std::optional<LineClient> connect(const std::string& host, uint16_t port,
                                             std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        for (;;) {
            base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_in address{};
            address.sin_family = AF_INET;
            address.sin_port = htons(port);
            inet_pton(AF_INET, host.c_str(), &address.sin_addr);
            if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0) {
                int one = 1;
                ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                return LineClient(std::move(fd));
            }
            if (std::chrono::steady_clock::now() >= deadline)
                return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    // The same over a unix socket at `path` (e.g. a QEMU monitor), retried until `timeout`.
    static std::optional<LineClient> connect_unix(const std::string& path,
                                                  std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        for (;;) {
            base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
            sockaddr_un address{};
            address.sun_family = AF_UNIX;
            if (path.size() >= sizeof address.sun_path)
                return std::nullopt;
            path.copy(address.sun_path, path.size());
            if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0)
                return LineClient(std::move(fd));
            if (std::chrono::steady_clock::now() >= deadline)
                return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    bool send(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = ::send(m_fd.get(), data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0)
                return false;
            data.remove_prefix(static_cast<size_t>(n));
        }
        return true;
    }

    // The next line without its newline (and without a trailing \r), or nullopt on EOF/timeout.
    std::optional<std::string> line(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        for (;;) {
            if (auto newline = m_buffer.find('\n'); newline != std::string::npos) {
                std::string out = m_buffer.substr(0, newline);
                m_buffer.erase(0, newline + 1);
                if (!out.empty() && out.back() == '\r')
                    out.pop_back();
                return out;
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return std::nullopt;
            pollfd p{m_fd.get(), POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                continue;
            char buffer[4096];
            ssize_t n = ::recv(m_fd.get(), buffer, sizeof(buffer), 0);
            if (n <= 0) {
                m_ended = true;
                return std::nullopt;
            }
            m_buffer.append(buffer, static_cast<size_t>(n));
        }
    }

    // True once a read found the connection closed or broken (rather than merely quiet).
    bool ended() const { return m_ended; }

    std::optional<std::string> command(std::string_view text,
                                       std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        if (!send(std::string(text) + "\n"))
            return std::nullopt;
        return line(timeout);
    }

    // True when the server closed the connection (EOF) within the timeout.
    bool closed(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        while (std::chrono::steady_clock::now() < deadline) {
            pollfd p{m_fd.get(), POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0)
                continue;
            char buffer[4096];
            ssize_t n = ::recv(m_fd.get(), buffer, sizeof(buffer), 0);
            if (n <= 0)
                return true;
            m_buffer.append(buffer, static_cast<size_t>(n));
        }
        return false;
    }

    const std::string& buffered() const { return m_buffer; }
    void close() { m_fd.reset(); }
    // Ends the sending direction (the peer reads end-of-file) and keeps reading.
    void shutdown_sending() { ::shutdown(m_fd.get(), SHUT_WR); }

private:
    explicit LineClient(base::Fd fd) : m_fd(std::move(fd)) {}
    base::Fd m_fd;
    std::string m_buffer;
    bool m_ended = false;
};

}  // namespace colod::test
