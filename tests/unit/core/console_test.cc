// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "core/console.h"
#include "core/uart.h"

#include <atomic>
#include <thread>
#include "tests/support/test_net.h"

using namespace colod;
using namespace colod::core;
using colod::test::eventually;
using colod::test::LineClient;

namespace {

// Stands in for the UART: collects input, with a capacity that the test drains by hand.
class Sink : public ConsoleInput {
public:
    explicit Sink(size_t capacity = 1 << 20) : m_capacity(capacity) {}
    size_t push_input(std::span<const std::byte> bytes) override {
        std::lock_guard lock(m_mutex);
        size_t take = std::min(bytes.size(), m_capacity - m_pending);
        m_received.append(reinterpret_cast<const char*>(bytes.data()), take);
        m_pending += take;
        m_changed.notify_all();
        return take;
    }
    // Waits until the sink holds at least `n` bytes in total.
    std::string wait_for(size_t n) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, std::chrono::seconds(10), [&] { return m_received.size() >= n; });
        return m_received;
    }
    // Waits until the sink is full (nothing more can come before a drain) or holds `total`.
    void wait_full_or(size_t total) {
        std::unique_lock lock(m_mutex);
        m_changed.wait_for(lock, std::chrono::seconds(10),
                           [&] { return m_pending == m_capacity || m_received.size() >= total; });
    }
    std::string received() {
        std::lock_guard lock(m_mutex);
        return m_received;
    }
    void drain() {
        std::lock_guard lock(m_mutex);
        m_pending = 0;
    }

private:
    std::mutex m_mutex;
    std::condition_variable m_changed;
    std::string m_received;
    size_t m_capacity;
    size_t m_pending = 0;
};

std::unique_ptr<ConsoleServer> make_server(Sink& sink, ConsoleOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    auto server = ConsoleServer::create(options, sink);
    REQUIRE(server);
    return std::move(server).value();
}

LineClient connect(ConsoleServer& server) {
    auto client = LineClient::connect("127.0.0.1", server.port());
    REQUIRE(client);
    return std::move(*client);
}

// A fresh directory for unix sockets, removed with everything in it.
class SocketDir {
public:
    SocketDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "colod-console-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        m_path = pattern;
        ::chmod(m_path.c_str(), 0755);  // others may reach the socket: only its own mode keeps them out
    }
    ~SocketDir() {
        std::error_code ignored;
        std::filesystem::remove_all(m_path, ignored);
    }
    std::filesystem::path operator/(const char* name) const { return m_path / name; }

private:
    std::filesystem::path m_path;
};

std::unique_ptr<ConsoleServer> make_unix_server(Sink& sink, const std::filesystem::path& path,
                                                ConsoleOptions options = {}) {
    options.unix_path = path;
    auto server = ConsoleServer::create(options, sink);
    REQUIRE(server);
    return std::move(server).value();
}

LineClient connect_unix(const std::filesystem::path& path) {
    auto client = LineClient::connect_unix(path.string());
    REQUIRE(client);
    return std::move(*client);
}

// A socket file that no process listens on, as a daemon that died leaves it.
void make_stale_socket(const std::filesystem::path& path) {
    colod::base::Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    path.native().copy(address.sun_path, sizeof(address.sun_path) - 1);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    REQUIRE(::listen(fd.get(), 1) == 0);
}  // closed without unlinking

// The errno of a connect() to `path` by a process running as `uid`/`gid`, 0 if it connected.
int connect_errno_as(const std::filesystem::path& path, uid_t uid, gid_t gid) {
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0)
            ::_exit(255);
        int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        path.native().copy(address.sun_path, sizeof(address.sun_path) - 1);
        ::_exit(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 ? 0 : errno);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) != 255);
    return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("console feeds whole lines and broadcasts output to every client") {
    Sink sink;
    auto server = make_server(sink);
    auto a = connect(*server);
    auto b = connect(*server);
    REQUIRE(eventually([&] { return server->client_count() == 2; }));

    a.send("PING\n");
    CHECK(sink.wait_for(5) == "PING\n");
    server->broadcast(std::as_bytes(std::span("PONG\n", 5)));
    CHECK(a.line() == "PONG");
    CHECK(b.line() == "PONG");
}

TEST_CASE("console never interleaves lines of different clients") {
    Sink sink;
    auto server = make_server(sink);
    auto a = connect(*server);
    auto b = connect(*server);
    REQUIRE(eventually([&] { return server->client_count() == 2; }));
    a.send("SET alpha ");
    b.send("SET beta 2\n");
    CHECK(sink.wait_for(11) == "SET beta 2\n");
    a.send("1\n");
    CHECK(sink.wait_for(22) == "SET beta 2\nSET alpha 1\n");
}

TEST_CASE("console drops a leaving client's partial line but feeds its whole lines") {
    Sink sink;
    auto server = make_server(sink);
    {
        auto a = connect(*server);
        a.send("INCR x\nINCR y\nSET half");
    }
    CHECK(sink.wait_for(14) == "INCR x\nINCR y\n");
    auto b = connect(*server);
    b.send("PING\n");
    CHECK(sink.wait_for(19) == "INCR x\nINCR y\nPING\n");
    CHECK(eventually([&] { return server->client_count() == 1; }));
}

TEST_CASE("console applies back-pressure instead of losing input") {
    Sink sink(16);
    auto server = make_server(sink);
    auto a = connect(*server);
    std::string lines;
    for (int i = 0; i < 200; ++i)
        lines += fmt::format("SET key{} value{}\n", i, i);
    a.send(lines);
    while (sink.received().size() < lines.size()) {
        sink.wait_full_or(lines.size());
        sink.drain();
        server->input_space_available();
    }
    CHECK(sink.received() == lines);
}

TEST_CASE("console refuses clients beyond the limit") {
    Sink sink;
    ConsoleOptions options;
    options.max_clients = 1;
    auto server = make_server(sink, options);
    auto a = connect(*server);
    REQUIRE(eventually([&] { return server->client_count() == 1; }));
    auto b = connect(*server);
    CHECK(b.line() == "ERR console full");
    CHECK(b.closed());
    CHECK(server->client_count() == 1);
}

TEST_CASE("console drops a client that stops reading, keeps the others") {
    Sink sink;
    ConsoleOptions options;
    options.max_client_output = 64 << 10;
    auto server = make_server(sink, options);
    auto slow = connect(*server);
    auto fast = connect(*server);
    REQUIRE(eventually([&] { return server->client_count() == 2; }));
    std::string chunk(64 << 10, 'x');
    chunk.back() = '\n';
    size_t lines_sent = 0;
    // Keep the fast client reading while the slow one never does.
    while (server->client_count() == 2 && lines_sent < 4096) {
        server->broadcast(std::as_bytes(std::span(chunk.data(), chunk.size())));
        ++lines_sent;
        REQUIRE(fast.line());
    }
    CHECK(server->client_count() == 1);
    server->broadcast(std::as_bytes(std::span("after\n", 6)));
    std::optional<std::string> last;
    do {
        last = fast.line();
    } while (last && *last != "after");
    CHECK(last == "after");
}

TEST_CASE("console and UART never deadlock when input floods in while the guest writes") {
    // The UART hands transmitted bytes to the console while a console thread pushes input into
    // the UART: a guest thread echoes every byte it reads straight back out.
    std::unique_ptr<ConsoleServer> server;
    Uart uart(0x3f8, [&](std::span<const std::byte> bytes) { server->broadcast(bytes); }, nullptr);
    ConsoleOptions options;
    options.host = "127.0.0.1";
    auto created = ConsoleServer::create(options, uart);
    REQUIRE(created);
    server = std::move(created).value();
    uart.set_space_callback([&] { server->input_space_available(); });

    std::atomic<bool> stop{false};
    std::thread guest([&] {
        while (!stop) {
            std::byte lsr{}, byte{};
            uart.pio_read(0x3fd, std::span(&lsr, 1));
            if ((static_cast<uint8_t>(lsr) & 1) == 0) {
                std::this_thread::yield();
                continue;
            }
            uart.pio_read(0x3f8, std::span(&byte, 1));
            uart.pio_write(0x3f8, std::span(&byte, 1));
        }
    });
    auto client = connect(*server);
    std::string flood;
    for (int i = 0; i < 500; ++i)
        flood += fmt::format("SET key{} {}\n", i, std::string(40, 'v'));
    client.send(flood);
    bool all = true;
    for (int i = 0; i < 500 && all; ++i)
        all = client.line(std::chrono::seconds(10)) == fmt::format("SET key{} {}", i, std::string(40, 'v'));
    CHECK(all);
    stop = true;
    guest.join();
    server->stop();
}

TEST_CASE("output broadcast just before the console stops still reaches its clients") {
    // A guest's last words (kvstored's OK to POWEROFF, then the power-off) must not be lost to
    // the console closing at once: the output goes out, then the connection closes.
    for (int round = 0; round < 50; ++round) {
        Sink sink;
        auto server = make_server(sink);
        auto client = connect(*server);
        REQUIRE(eventually([&] { return server->client_count() == 1; }));
        server->broadcast(std::as_bytes(std::span("OK\n", 3)));
        server->stop();
        INFO("round " << round);
        REQUIRE(client.line() == "OK");
        CHECK(client.closed());
    }
}

TEST_CASE("console on a unix socket: mode 0600, every client sees the output, removed on stop", "[unix]") {
    SocketDir dir;
    const auto path = dir / "console.sock";
    Sink sink;
    ConsoleOptions options;
    options.max_clients = 2;
    auto server = make_unix_server(sink, path, options);
    CHECK(server->port() == 0);

    struct stat info {};
    REQUIRE(::stat(path.c_str(), &info) == 0);
    CHECK(S_ISSOCK(info.st_mode));
    CHECK((info.st_mode & 07777) == 0600);
    CHECK(info.st_uid == ::geteuid());

    auto a = connect_unix(path);
    auto b = connect_unix(path);
    REQUIRE(eventually([&] { return server->client_count() == 2; }));
    a.send("PING\n");
    CHECK(sink.wait_for(5) == "PING\n");
    b.send("SET k ");
    a.send("INCR n\n");
    b.send("v\n");
    const std::string lines = sink.wait_for(20);  // whole lines, in either order, never interleaved
    CHECK((lines == "PING\nINCR n\nSET k v\n" || lines == "PING\nSET k v\nINCR n\n"));
    server->broadcast(std::as_bytes(std::span("PONG\n", 5)));
    CHECK(a.line() == "PONG");
    CHECK(b.line() == "PONG");
    // The same limit as on TCP.
    auto c = connect_unix(path);
    CHECK(c.line() == "ERR console full");
    CHECK(c.closed());

    server->stop();
    CHECK(a.closed());
    CHECK_FALSE(std::filesystem::exists(std::filesystem::symlink_status(path)));
}

TEST_CASE("console socket: a stale file is replaced, a live console and other files are not", "[unix]") {
    SocketDir dir;
    const auto path = dir / "console.sock";
    Sink sink;
    make_stale_socket(path);
    REQUIRE(std::filesystem::is_socket(path));
    auto server = make_unix_server(sink, path);
    auto client = connect_unix(path);
    client.send("PING\n");
    CHECK(sink.wait_for(5) == "PING\n");

    // A second console on the path of a live one is refused, and the live one keeps working.
    ConsoleOptions options;
    options.unix_path = path;
    auto second = ConsoleServer::create(options, sink);
    REQUIRE_FALSE(second.ok());
    CHECK(second.error().message() ==
          fmt::format("console: console socket {} is in use: is another daemon running for this VM?", path.string()));
    server->broadcast(std::as_bytes(std::span("PONG\n", 5)));
    CHECK(client.line() == "PONG");
    server->stop();

    // Whatever is not a socket stays where it is.
    const auto file = dir / "file";
    std::ofstream(file) << "keep me\n";
    options.unix_path = file;
    auto on_file = ConsoleServer::create(options, sink);
    REQUIRE_FALSE(on_file.ok());
    CHECK(on_file.error().message() ==
          fmt::format("console: console socket path {} exists and is not a socket", file.string()));
    CHECK(std::filesystem::file_size(file) == 8);
}

TEST_CASE("console socket: another user is refused by the socket's mode", "[unix]") {
    if (::geteuid() != 0) {
        WARN("skipped: needs root to connect as another user");
        return;
    }
    SocketDir dir;
    const auto path = dir / "console.sock";
    Sink sink;
    auto server = make_unix_server(sink, path);
    CHECK(connect_errno_as(path, 0, 0) == 0);              // the owner (root)
    CHECK(connect_errno_as(path, 65534, 65534) == EACCES);  // nobody
    ::chmod(path.c_str(), 0666);
    CHECK(connect_errno_as(path, 65534, 65534) == 0);  // the mode, not the directory, kept it out
}
