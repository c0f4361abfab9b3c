// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/console.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "base/log.h"
#include "base/thread_name.h"

namespace colod::core {

base::Result<base::Fd> listen_tcp(const std::string& host, uint16_t port, int backlog) {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = AF_INET;
    if (auto* v4 = reinterpret_cast<sockaddr_in*>(&storage); inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        length = sizeof(sockaddr_in);
    } else if (auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
               inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        length = sizeof(sockaddr_in6);
        family = AF_INET6;
    } else {
        return base::Error::make(base::Errc::Invalid, "'{}' is not a numeric IPv4 or IPv6 address", host);
    }
    base::Fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd)
        return base::Error::from_errno("socket");
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    // SAFETY: storage holds a sockaddr_in or sockaddr_in6 of `length` bytes.
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&storage), length) < 0)
        return base::Error::from_errno(fmt::format("bind {}:{}", host, port));
    if (::listen(fd.get(), backlog) < 0)
        return base::Error::from_errno(fmt::format("listen {}:{}", host, port));
    return fd;
}

base::Result<uint16_t> local_port(int fd) {
    sockaddr_storage storage{};
    socklen_t length = sizeof(storage);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&storage), &length) < 0)
        return base::Error::from_errno("getsockname");
    if (storage.ss_family == AF_INET6)
        return ntohs(reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port);
    return ntohs(reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
}

base::Result<sockaddr_un> unix_socket_address(const std::filesystem::path& path, std::string_view what) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.native().size() >= sizeof(address.sun_path))
        return base::Error::make(base::Errc::Invalid, "{} path {} is longer than {} bytes", what, path.string(),
                                 sizeof(address.sun_path) - 1);
    std::memcpy(address.sun_path, path.c_str(), path.native().size());
    return address;
}

base::Result<base::Fd> listen_unix(const std::filesystem::path& path, std::string_view what, int backlog) {
    sockaddr_un address = TRY(unix_socket_address(path, what));
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec)
        return base::Error::make(base::Errc::System, "creating {}: {}", path.parent_path().string(), ec.message());

    // A socket file may be left by a daemon that died. If something still answers there, another
    // daemon owns it: refuse rather than steal it. Only a refused connection means nobody is
    // there; anything else (a full backlog, no permission) leaves the file alone.
    if (auto status = std::filesystem::symlink_status(path, ec); std::filesystem::exists(status)) {
        if (!std::filesystem::is_socket(status))
            return base::Error::make(base::Errc::Invalid, "{} path {} exists and is not a socket", what, path.string());
        base::Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!probe)
            return base::Error::from_errno("socket(AF_UNIX)");
        // SAFETY: address is a filled sockaddr_un.
        if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 || errno == EAGAIN)
            return base::Error::make(base::Errc::Invalid, "{} {} is in use: is another daemon running for this VM?",
                                     what, path.string());
        if (errno != ECONNREFUSED && errno != ENOENT)
            return base::Error::from_errno(fmt::format("probing {} {}", what, path.string()));
        ::unlink(path.c_str());
    }

    base::Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!listener)
        return base::Error::from_errno("socket(AF_UNIX)");
    mode_t old_mask = ::umask(0177);  // the socket file is created 0600: no client connects before the chmod
    int bound = ::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address));
    int bind_errno = errno;
    ::umask(old_mask);
    if (bound < 0)
        return base::Error::from_errno("bind " + path.string(), bind_errno);
    if (::chmod(path.c_str(), 0600) < 0)
        return base::Error::from_errno("chmod " + path.string());
    if (::listen(listener.get(), backlog) < 0)
        return base::Error::from_errno("listen " + path.string());
    return listener;
}

base::Result<std::unique_ptr<ConsoleServer>> ConsoleServer::create(const ConsoleOptions& options,
                                                                   ConsoleInput& input) {
    const bool unix_socket = !options.unix_path.empty();
    auto listener =
        unix_socket ? listen_unix(options.unix_path, "console socket") : listen_tcp(options.host, options.port);
    if (!listener)
        return std::move(listener).error().context("console");
    uint16_t port = 0;
    if (!unix_socket)
        port = TRY(local_port(listener->get()));
    std::unique_ptr<ConsoleServer> server(new ConsoleServer(options, input, std::move(listener).value(), port));
    if (!server->m_wake)
        return base::Error::from_errno("eventfd");
    server->m_thread = base::named_thread("console", [s = server.get()] {
        s->loop();
    });
    return server;
}

ConsoleServer::ConsoleServer(const ConsoleOptions& options, ConsoleInput& input, base::Fd listener, uint16_t port)
    : m_options(options),
      m_input(input),
      m_listener(std::move(listener)),
      m_wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      m_port(port) {}

ConsoleServer::~ConsoleServer() { stop(); }

void ConsoleServer::stop() {
    if (m_stop.exchange(true))
        return;
    wake();
    if (m_thread.joinable())
        m_thread.join();
    std::lock_guard lock(m_mutex);
    flush_clients_locked(std::chrono::milliseconds(1000));
    m_clients.clear();
    m_listener.reset();
    if (!m_options.unix_path.empty())
        ::unlink(m_options.unix_path.c_str());
}

void ConsoleServer::flush_clients_locked(std::chrono::milliseconds budget) {
    // What the guest said last (a reply just before it powered off, say) still goes out to the
    // clients that read; one that does not read within the budget loses the rest.
    auto deadline = std::chrono::steady_clock::now() + budget;
    for (auto& client : m_clients) {
        while (client.fd.valid() && !client.out.empty()) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return;
            pollfd p{client.fd.get(), POLLOUT, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0 || !(p.revents & POLLOUT))
                break;
            ssize_t n = ::send(client.fd.get(), client.out.data(), client.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                break;
            if (n > 0)
                client.out.erase(0, static_cast<size_t>(n));
        }
    }
}

void ConsoleServer::wake() {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(m_wake.get(), &one, sizeof(one));
}

size_t ConsoleServer::client_count() const {
    std::lock_guard lock(m_mutex);
    return client_count_locked();
}

size_t ConsoleServer::client_count_locked() const {
    size_t n = 0;
    for (const auto& client : m_clients)
        n += client.fd.valid() ? 1 : 0;
    return n;
}

void ConsoleServer::broadcast(std::span<const std::byte> bytes) {
    if (bytes.empty())
        return;
    {
        std::lock_guard lock(m_mutex);
        for (auto& client : m_clients)
            if (client.fd.valid())
                client.out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    }
    wake();
}

void ConsoleServer::input_space_available() { wake(); }

void ConsoleServer::drop(size_t index, std::string_view why) {
    Client& client = m_clients[index];
    base::logf(base::Level::Info, base::Event::None, "console client {} left: {}", client.id, why);
    client.fd.reset();
    client.out.clear();
    if (m_feeder == client.id && client.in.find('\n') == std::string::npos) {
        // Part of this client's over-long line already reached the guest; end it so the next
        // client's line starts clean (the guest answers the fragment with an error line).
        m_feeder = 0;
        m_inject_newline = true;
    }
    // Whole lines it sent before leaving are still fed to the guest; a trailing partial line
    // is not.
    size_t last_newline = client.in.rfind('\n');
    client.in.resize(last_newline == std::string::npos ? 0 : last_newline + 1);
}

void ConsoleServer::reap_closed() {
    std::erase_if(m_clients, [&](const Client& client) {
        return !client.fd.valid() && client.in.empty() && client.id != m_feeder;
    });
}

void ConsoleServer::accept_clients() {
    for (;;) {
        int fd = ::accept4(m_listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        base::Fd owned(fd);
        if (client_count_locked() >= m_options.max_clients) {
            static constexpr char k_full[] = "ERR console full\n";
            [[maybe_unused]] ssize_t n = ::send(fd, k_full, sizeof(k_full) - 1, MSG_NOSIGNAL);
            base::logf(base::Level::Warning, base::Event::None, "console: refused a client, {} already connected", m_clients.size());
            continue;
        }
        if (m_options.unix_path.empty()) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        m_clients.push_back(Client{std::move(owned), {}, {}, m_next_id++});
        base::logf(base::Level::Info, base::Event::None, "console client {} connected", m_clients.back().id);
    }
}

void ConsoleServer::feed_input() {
    if (m_inject_newline) {
        static constexpr std::byte k_newline{'\n'};
        if (m_input.push_input(std::span(&k_newline, 1)) != 1)
            return;
        m_inject_newline = false;
    }
    for (;;) {
        if (m_feeder == 0) {
            // Next client with a whole line (or an over-long one), round-robin for fairness.
            size_t n = m_clients.size();
            for (size_t k = 0; k < n; ++k) {
                Client& candidate = m_clients[(m_round_robin + k) % n];
                if (candidate.in.find('\n') != std::string::npos || candidate.in.size() >= m_options.max_line_hold) {
                    m_feeder = candidate.id;
                    m_round_robin = (m_round_robin + k + 1) % n;
                    break;
                }
            }
            if (m_feeder == 0)
                return;
        }
        Client* feeder = nullptr;
        for (auto& client : m_clients)
            if (client.id == m_feeder)
                feeder = &client;
        if (!feeder) {
            m_feeder = 0;
            continue;
        }
        size_t newline = feeder->in.find('\n');
        size_t want = newline == std::string::npos ? feeder->in.size() : newline + 1;
        if (want == 0)
            return;  // streaming an over-long line: wait for more of it
        size_t took = m_input.push_input(std::as_bytes(std::span(feeder->in.data(), want)));
        feeder->in.erase(0, took);
        if (took == want && newline != std::string::npos) {
            m_feeder = 0;  // the line is complete
            continue;
        }
        return;  // the guest's buffer is full, or the long line goes on
    }
}

void ConsoleServer::loop() {
    std::vector<pollfd> fds;
    std::vector<uint64_t> ids;
    char buffer[4096];
    while (!m_stop.load()) {
        fds.clear();
        ids.clear();
        fds.push_back({m_wake.get(), POLLIN, 0});
        fds.push_back({m_listener.get(), POLLIN, 0});
        {
            std::lock_guard lock(m_mutex);
            for (auto& client : m_clients) {
                if (!client.fd.valid())
                    continue;
                short events = 0;
                if (client.in.size() < m_options.max_line_hold)
                    events |= POLLIN;
                if (!client.out.empty())
                    events |= POLLOUT;
                fds.push_back({client.fd.get(), events, 0});
                ids.push_back(client.id);
            }
        }
        if (::poll(fds.data(), fds.size(), -1) < 0) {
            if (errno == EINTR)
                continue;
            base::logf(base::Level::Error, base::Event::Error, "console: poll failed: {}", std::strerror(errno));
            return;
        }
        if (fds[0].revents) {
            uint64_t count;
            [[maybe_unused]] ssize_t n = ::read(m_wake.get(), &count, sizeof(count));
        }
        std::lock_guard lock(m_mutex);
        if (fds[1].revents & POLLIN)
            accept_clients();
        for (size_t i = 2; i < fds.size(); ++i) {
            if (!fds[i].revents)
                continue;
            size_t index = 0;
            while (index < m_clients.size() && m_clients[index].id != ids[i - 2])
                ++index;
            if (index == m_clients.size())
                continue;
            Client& client = m_clients[index];
            if (fds[i].revents & POLLIN) {
                size_t room = m_options.max_line_hold - std::min(m_options.max_line_hold, client.in.size());
                ssize_t n = ::recv(client.fd.get(), buffer, std::min(room, sizeof(buffer)), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    drop(index, n == 0 ? "closed" : std::strerror(errno));
                    continue;
                }
                if (n > 0)
                    client.in.append(buffer, static_cast<size_t>(n));
            } else if (fds[i].revents & (POLLHUP | POLLERR)) {
                drop(index, "hung up");
                continue;
            }
            if ((fds[i].revents & POLLOUT) && !client.out.empty()) {
                ssize_t n = ::send(client.fd.get(), client.out.data(), client.out.size(), MSG_NOSIGNAL);
                if (n < 0 && errno != EAGAIN && errno != EINTR) {
                    drop(index, std::strerror(errno));
                    continue;
                }
                if (n > 0)
                    client.out.erase(0, static_cast<size_t>(n));
            }
        }
        for (size_t i = 0; i < m_clients.size(); ++i) {
            if (m_clients[i].fd.valid() && m_clients[i].out.size() > m_options.max_client_output)
                drop(i, fmt::format("fell {} bytes behind the console output", m_clients[i].out.size()));
        }
        feed_input();
        reap_closed();
    }
}

}  // namespace colod::core
