// SPDX-License-Identifier: GPL-2.0-or-later
// A raw HTTP/1.x client for tests of the metrics endpoint: sends bytes exactly as given (so a
// test can send a broken or partial request) and reads whatever comes back until the server
// closes or a deadline passes. Also reads one sample out of a Prometheus text exposition.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "base/fd.h"
#include "tests/support/backend.h"

namespace colod::test {

class HttpConnection {
public:
    // Connects to IPv4 `host`:`port`; nullopt if refused.
    static std::optional<HttpConnection> open(const std::string& host, uint16_t port) {
        base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        inet_pton(AF_INET, host.c_str(), &address.sin_addr);
        if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
            return std::nullopt;
        return HttpConnection(std::move(fd));
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

    // Reads until the server closes the connection (true) or `timeout` passes (false); what
    // arrived is in received(). A reset counts as closed.
    bool read_until_closed(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        char buffer[4096];
        for (;;) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return false;
            pollfd p{m_fd.get(), POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                continue;
            ssize_t n = ::recv(m_fd.get(), buffer, sizeof(buffer), 0);
            if (n <= 0)
                return true;
            m_received.append(buffer, static_cast<size_t>(n));
        }
    }

    // Reads until `text` has arrived (true), or the connection closes or `timeout` passes.
    bool read_until(std::string_view text, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        char buffer[4096];
        while (m_received.find(text) == std::string::npos) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return false;
            pollfd p{m_fd.get(), POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                continue;
            ssize_t n = ::recv(m_fd.get(), buffer, sizeof(buffer), 0);
            if (n <= 0)
                return false;
            m_received.append(buffer, static_cast<size_t>(n));
        }
        return true;
    }

    // True while the server has neither closed the connection nor sent anything.
    bool quiet_and_open() {
        pollfd p{m_fd.get(), POLLIN, 0};
        return ::poll(&p, 1, 0) == 0;
    }

    const std::string& received() const { return m_received; }
    void close() { m_fd = base::Fd(); }

private:
    explicit HttpConnection(base::Fd fd) : m_fd(std::move(fd)) {}
    base::Fd m_fd;
    std::string m_received;
};

// One GET with Connection: close; the whole response (status line, header, body), or nullopt
// when the connection is refused or the answer does not complete in time.
inline std::optional<std::string> http_get(const std::string& host, uint16_t port, const std::string& path,
                                           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto connection = HttpConnection::open(host, port);
    if (!connection ||
        !connection->send(fmt::format("GET {} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\n\r\n", path, host, port)))
        return std::nullopt;
    if (!connection->read_until_closed(timeout))
        return std::nullopt;
    return connection->received();
}

// The body of a response (after the blank line ending the header).
inline std::string http_body(const std::string& response) {
    auto at = response.find("\r\n\r\n");
    return at == std::string::npos ? std::string() : response.substr(at + 4);
}

// The value of the sample written exactly as `series` (name and labels, e.g.
// `colod_state{vm="demo",state="active"}`) in a text exposition; nullopt when absent.
inline std::optional<double> metric_value(const std::string& exposition, std::string_view series) {
    size_t at = 0;
    while ((at = exposition.find(series, at)) != std::string::npos) {
        bool line_start = at == 0 || exposition[at - 1] == '\n';
        size_t value = at + series.size();
        if (line_start && value < exposition.size() && exposition[value] == ' ') {
            size_t end = exposition.find('\n', value);
            return std::strtod(exposition.substr(value + 1, end - value - 1).c_str(), nullptr);
        }
        at = value;
    }
    return std::nullopt;
}

}  // namespace colod::test
