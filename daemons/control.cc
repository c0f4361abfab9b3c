// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "base/log.h"
#include "base/thread_name.h"
#include "core/console.h"

namespace colod::daemons {

namespace {

constexpr size_t k_max_request = 1024;


// Waits until fd is ready for `events` or the deadline passes.
bool wait_ready(int fd, short events, std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return false;
        pollfd p{fd, events, 0};
        int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            return false;
    }
}

bool send_all(int fd, std::string_view data, std::chrono::steady_clock::time_point deadline) {
    while (!data.empty()) {
        if (!wait_ready(fd, POLLOUT, deadline))
            return false;
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR && errno != EAGAIN)
            return false;
        if (n > 0)
            data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

}  // namespace

base::Result<std::unique_ptr<ControlServer>> ControlServer::create(const std::filesystem::path& path,
                                                                   Handler handler) {
    base::Fd listener = TRY(core::listen_unix(path, "control socket", 16));
    std::unique_ptr<ControlServer> server(new ControlServer(path, std::move(listener), std::move(handler)));
    if (!server->m_wake)
        return base::Error::from_errno("eventfd");
    server->m_thread = base::named_thread("control", [s = server.get()] {
        s->loop();
    });
    return server;
}

ControlServer::ControlServer(std::filesystem::path path, base::Fd listener, Handler handler)
    : m_path(std::move(path)),
      m_listener(std::move(listener)),
      m_wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      m_handler(std::move(handler)) {}

ControlServer::~ControlServer() { stop(); }

void ControlServer::stop() {
    if (m_stop.exchange(true))
        return;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(m_wake.get(), &one, sizeof(one));
    if (m_thread.joinable())
        m_thread.join();
    ::unlink(m_path.c_str());
}

void ControlServer::loop() {
    while (!m_stop.load()) {
        pollfd fds[2] = {{m_wake.get(), POLLIN, 0}, {m_listener.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR)
            return;
        if (fds[0].revents)
            return;
        if (!(fds[1].revents & POLLIN))
            continue;
        int fd = ::accept4(m_listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0)
            serve(base::Fd(fd));
    }
}

void ControlServer::serve(base::Fd client) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    std::string request;
    char buffer[256];
    while (request.find('\n') == std::string::npos) {
        if (request.size() > k_max_request || !wait_ready(client.get(), POLLIN, deadline)) {
            send_all(client.get(), "ERR request too long or incomplete\n", deadline);
            return;
        }
        ssize_t n = ::recv(client.get(), buffer, sizeof(buffer), 0);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return;
        }
        request.append(buffer, static_cast<size_t>(n));
    }
    if (auto newline = request.find('\n'); newline != std::string::npos)
        request.resize(newline);
    ControlReply reply = m_handler(request);
    std::string text = reply.ok ? "OK\n" + reply.body : "ERR " + reply.body + "\n";
    if (reply.ok && !text.empty() && text.back() != '\n')
        text += '\n';
    send_all(client.get(), text, std::chrono::steady_clock::now() + std::chrono::seconds(5));
}

base::Result<ControlReply> control_request(const std::filesystem::path& path, const std::string& request,
                                           int timeout_ms) {
    auto address = TRY(core::unix_socket_address(path, "control socket"));
    base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd)
        return base::Error::from_errno("socket(AF_UNIX)");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) < 0)
        return base::Error::from_errno("connect " + path.string());
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    if (!send_all(fd.get(), request + "\n", deadline))
        return base::Error::make(base::Errc::Timeout, "sending the request to {}", path.string());
    std::string answer;
    char buffer[4096];
    for (;;) {
        if (!wait_ready(fd.get(), POLLIN, deadline))
            return base::Error::make(base::Errc::Timeout, "no answer from {} within {} ms", path.string(), timeout_ms);
        ssize_t n = ::recv(fd.get(), buffer, sizeof(buffer), 0);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return base::Error::from_errno("recv " + path.string());
        }
        answer.append(buffer, static_cast<size_t>(n));
    }
    ControlReply reply;
    if (answer.rfind("OK\n", 0) == 0) {
        reply.body = answer.substr(3);
    } else if (answer.rfind("ERR ", 0) == 0) {
        reply.ok = false;
        reply.body = answer.substr(4);
        while (!reply.body.empty() && reply.body.back() == '\n')
            reply.body.pop_back();
    } else {
        return base::Error::make(base::Errc::Protocol, "unexpected answer from {}: '{}'", path.string(),
                                 answer.substr(0, 80));
    }
    return reply;
}

}  // namespace colod::daemons
