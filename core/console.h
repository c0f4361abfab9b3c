// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <sys/un.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "base/result.h"

namespace colod::core {

// Where console input goes: the guest's UART.
class ConsoleInput {
public:
    virtual ~ConsoleInput() = default;
    // Takes up to bytes.size() bytes; returns how many it took.
    virtual size_t push_input(std::span<const std::byte> bytes) = 0;
};

struct ConsoleOptions {
    std::string host = "127.0.0.1";
    uint16_t port = 0;               // 0 picks a free port (tests)
    // When set, the console is a unix stream socket here instead of host:port: mode 0600, so
    // only the daemon's user reaches it; removed again when the console stops.
    std::filesystem::path unix_path;
    size_t max_clients = 16;
    size_t max_client_output = 1 << 20;  // a client that falls this far behind is dropped
    size_t max_line_hold = 8192;         // input held per client while waiting for its newline
};

// The guest's serial console on a TCP endpoint or a unix socket. Any number of clients (up to
// max_clients) may connect; all of them see all output. Input is fed to the guest a whole line
// at a time, one client's line after another, so lines of different clients never interleave;
// a partial line of a client that disconnects (or only shuts down its sending side) is dropped,
// not fed. A line longer than max_line_hold is
// streamed as it comes (the guest rejects it), and holds the input until its newline.
class ConsoleServer {
public:
    static base::Result<std::unique_ptr<ConsoleServer>> create(const ConsoleOptions& options, ConsoleInput& input);
    ~ConsoleServer();

    uint16_t port() const { return m_port; }  // 0 for a unix socket

    // Sends guest output to every client. Thread-safe; never blocks on a slow client.
    void broadcast(std::span<const std::byte> bytes);
    // The input sink has room again (the guest read some bytes).
    void input_space_available();
    // Closes every client and the listener; stops the thread. Output not yet written goes out
    // first to clients that read it within a second.
    void stop();

    size_t client_count() const;

private:
    struct Client {
        base::Fd fd;
        std::string in;   // received, not yet fed to the guest
        std::string out;  // guest output not yet written
        uint64_t id;
    };

    ConsoleServer(const ConsoleOptions& options, ConsoleInput& input, base::Fd listener, uint16_t port);
    void loop();
    void accept_clients();
    void feed_input();              // caller holds m_mutex
    // Closes a client; its complete lines are still fed, its partial line is not. Caller holds m_mutex.
    void drop(size_t index, std::string_view why);
    void reap_closed();                   // caller holds m_mutex
    void flush_clients_locked(std::chrono::milliseconds budget);  // caller holds m_mutex
    size_t client_count_locked() const;   // caller holds m_mutex
    void wake();

    ConsoleOptions m_options;
    ConsoleInput& m_input;
    base::Fd m_listener;
    base::Fd m_wake;
    uint16_t m_port;

    mutable std::mutex m_mutex;
    std::vector<Client> m_clients;
    uint64_t m_next_id = 1;
    uint64_t m_feeder = 0;  // id of the client whose line is being fed, 0 = none
    size_t m_round_robin = 0;
    bool m_inject_newline = false;
    std::atomic<bool> m_stop{false};
    std::thread m_thread;
};

// Binds and listens on host:port (numeric IPv4 or IPv6); port 0 picks one.
base::Result<base::Fd> listen_tcp(const std::string& host, uint16_t port, int backlog = 64);
// The port a listening socket is bound to.
base::Result<uint16_t> local_port(int fd);

// The address of a unix socket at `path`; an error when the path does not fit sun_path. `what`
// names the socket in the message ("console socket", "control socket").
base::Result<sockaddr_un> unix_socket_address(const std::filesystem::path& path, std::string_view what);

// Binds and listens on a unix stream socket at `path`, mode 0600 (the caller's user only),
// creating its directory. A socket file that nobody answers on (left by a daemon that died) is
// replaced; one that a live process answers on, or a file that is not a socket, is refused.
// `what` names the socket in messages ("console socket", "control socket").
base::Result<base::Fd> listen_unix(const std::filesystem::path& path, std::string_view what, int backlog = 64);

}  // namespace colod::core
