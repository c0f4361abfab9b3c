// SPDX-License-Identifier: GPL-2.0-or-later
#include <catch2/catch.hpp>

#include <condition_variable>
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
