// SPDX-License-Identifier: GPL-2.0-or-later
// The metrics endpoint over real sockets on loopback: what each request is answered, and that
// bad clients (too large, too slow, too many) are cut off without holding up the others.
#include <catch2/catch.hpp>

#include <atomic>
#include <vector>

#include "daemons/metrics.h"
#include "daemons/metrics_format.h"
#include "tests/support/free_port.h"
#include "tests/support/http_client.h"
#include "tests/support/test_net.h"

using namespace colod;
using namespace std::chrono_literals;
using daemons::MetricsServer;
using test::HttpConnection;

namespace {

config::Endpoint loopback(uint16_t port = 0) {
    return config::Endpoint{config::AddressFamily::Ipv4, "127.0.0.1", port};
}

// The defaults but these; every scrape takes a snapshot unless `reuse` says otherwise.
MetricsServer::Limits limits(size_t connections = 16, std::chrono::milliseconds timeout = 5s,
                             std::chrono::milliseconds reuse = 0ms) {
    MetricsServer::Limits l;
    l.max_connections = connections;
    l.request_timeout = timeout;
    l.snapshot_reuse = reuse;
    return l;
}

// A server whose snapshot is a fixed status, counting the snapshots it took.
struct Served {
    std::atomic<int> snapshots{0};
    std::unique_ptr<MetricsServer> server;

    explicit Served(MetricsServer::Limits given = limits()) {
        auto created = MetricsServer::create(
            loopback(),
            [this] {
                ++snapshots;
                core::Status s;
                s.vm = "demo";
                s.role = "primary";
                s.state = "protected";
                return s;
            },
            given);
        REQUIRE(created);
        server = std::move(created).value();
        REQUIRE(server->port() != 0);
    }
    std::optional<HttpConnection> connect() { return HttpConnection::open("127.0.0.1", server->port()); }
    // Sends `request` on a new connection and returns everything until the server closes it.
    std::string exchange(const std::string& request) {
        auto c = connect();
        REQUIRE(c);
        REQUIRE(c->send(request));
        CHECK(c->read_until_closed());
        return c->received();
    }
};

bool contains(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("metrics server: GET /metrics is the text format, 200 with its content type", "[metrics]") {
    Served served;
    std::string response = served.exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    INFO(response);
    CHECK(response.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(contains(response, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    CHECK(contains(response, "\r\nConnection: close\r\n"));
    std::string body = test::http_body(response);
    CHECK(contains(response, fmt::format("\r\nContent-Length: {}\r\n", body.size())));
    CHECK(contains(body, "# TYPE colod_state gauge\n"));
    CHECK(test::metric_value(body, R"(colod_state{vm="demo",state="protected"})") == 1);
    CHECK(served.snapshots == 1);

    // A query string is allowed (Prometheus may add one); HTTP/1.0 is answered in kind.
    response = served.exchange("GET /metrics?format=text HTTP/1.0\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.0 200 OK\r\n"));
    // HEAD: the header of the GET, no body.
    response = served.exchange("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(contains(response, "\r\nContent-Length: "));
    CHECK(test::http_body(response).empty());
}

TEST_CASE("metrics server: one connection serves requests one after another (keep-alive)", "[metrics]") {
    Served served;
    auto c = served.connect();
    REQUIRE(c);
    REQUIRE(c->send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    REQUIRE(c->read_until("colod_uptime_seconds{"));
    REQUIRE(c->send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    CHECK(c->read_until_closed());
    const std::string& both = c->received();
    CHECK(both.starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(both.find("HTTP/1.1 200 OK\r\n", 10) != std::string::npos);
    CHECK(served.snapshots == 2);
}

TEST_CASE("metrics server: another path is 404, another method 405 with Allow, garbage 400", "[metrics]") {
    Served served;
    std::string response = served.exchange("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.1 404 Not Found\r\n"));
    response = served.exchange("GET /metricsx HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.1 404 Not Found\r\n"));
    // A body is never read: the answer comes, then the server closes.
    response = served.exchange("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    INFO(response);
    CHECK(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    CHECK(contains(response, "\r\nAllow: GET, HEAD\r\n"));
    CHECK(contains(response, "\r\nConnection: close\r\n"));
    response = served.exchange("DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    response = served.exchange("this is not http\r\n\r\n");
    CHECK(response.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    CHECK(served.snapshots == 0);  // none of these looked at the daemon
}

TEST_CASE("metrics server: a header over the limit is answered 431 and the connection closed", "[metrics]") {
    Served served;  // 8 KiB
    std::string request = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: " + std::string(9000, 'a') + "\r\n\r\n";
    std::string response = served.exchange(request);
    CHECK(response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    // A header that never ends is cut off the same way, however much more comes.
    auto c = served.connect();
    REQUIRE(c);
    REQUIRE(c->send("GET /metrics HTTP/1.1\r\n"));
    for (int i = 0; i < 20; ++i)
        REQUIRE(c->send("X-More: " + std::string(1000, 'b') + "\r\n"));
    CHECK(c->read_until_closed());
    CHECK(c->received().starts_with("HTTP/1.1 431 "));
    // Just under the limit is fine.
    request =
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Filler: " + std::string(7000, 'a') + "\r\n\r\n";
    CHECK(served.exchange(request).starts_with("HTTP/1.1 200 OK\r\n"));
    CHECK(served.snapshots == 1);
}

TEST_CASE("metrics server: a slow client is closed at its deadline while others are served", "[metrics]") {
    Served served(limits(16, test::scaled(2000ms)));
    auto slow = served.connect();
    REQUIRE(slow);
    REQUIRE(slow->send("GET /metr"));  // and nothing more
    auto silent = served.connect();    // sends nothing at all
    REQUIRE(silent);
    auto fast = test::http_get("127.0.0.1", served.server->port(), "/metrics");
    REQUIRE(fast);
    CHECK(fast->starts_with("HTTP/1.1 200 OK\r\n"));
    // Served while both others were still open and unanswered.
    CHECK(slow->quiet_and_open());
    CHECK(silent->quiet_and_open());
    CHECK(slow->read_until_closed(30s));
    CHECK(slow->received().empty());
    CHECK(silent->read_until_closed(30s));
    CHECK(silent->received().empty());
    // A keep-alive connection idle after its answer is closed the same way.
    auto idle = served.connect();
    REQUIRE(idle);
    REQUIRE(idle->send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"));
    CHECK(idle->read_until_closed(30s));
    CHECK(idle->received().starts_with("HTTP/1.1 200 OK\r\n"));
}

TEST_CASE("metrics server: connections beyond the limit are closed at once", "[metrics]") {
    Served served(limits(4, 60s));
    std::vector<HttpConnection> held;
    for (int i = 0; i < 4; ++i) {
        auto c = served.connect();
        REQUIRE(c);
        held.push_back(std::move(*c));
    }
    // The fifth is accepted after the four (the listen queue is in order) and closed unanswered.
    auto fifth = served.connect();
    REQUIRE(fifth);
    fifth->send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(fifth->read_until_closed(30s));
    CHECK(fifth->received().empty());
    // The four are served.
    REQUIRE(held[0].send("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    CHECK(held[0].read_until_closed());
    CHECK(held[0].received().starts_with("HTTP/1.1 200 OK\r\n"));
    // Its slot is free again once the server has seen it go.
    held[0].close();
    CHECK(test::eventually([&] {
        auto again = test::http_get("127.0.0.1", served.server->port(), "/metrics");
        return again && again->starts_with("HTTP/1.1 200 OK\r\n");
    }));
    held.clear();
}

TEST_CASE("metrics server: scrapes close together share one snapshot", "[metrics]") {
    Served served(limits(16, 5s, 1h));
    for (int i = 0; i < 5; ++i) {
        auto response = test::http_get("127.0.0.1", served.server->port(), "/metrics");
        REQUIRE(response);
        CHECK(test::metric_value(test::http_body(*response), R"(colod_state{vm="demo",state="protected"})") == 1);
    }
    CHECK(served.snapshots == 1);
}

TEST_CASE("metrics server: stop closes every connection; no snapshot after it; a taken port is an error", "[metrics]") {
    auto served = std::make_unique<Served>();
    auto open = served->connect();
    REQUIRE(open);
    REQUIRE(open->send("GET /met"));
    uint16_t port = served->server->port();
    served->server->stop();
    CHECK(open->read_until_closed());
    int snapshots = served->snapshots;
    CHECK_FALSE(HttpConnection::open("127.0.0.1", port));
    CHECK(served->snapshots == snapshots);
    served->server->stop();  // idempotent
    served.reset();

    Served first;
    auto taken = MetricsServer::create(loopback(first.server->port()), [] { return core::Status{}; });
    REQUIRE_FALSE(taken);
    CHECK(taken.error().message() ==
          fmt::format("cannot listen on 127.0.0.1:{}: bind: Address already in use", first.server->port()));
    auto not_here = MetricsServer::create(config::Endpoint{config::AddressFamily::Ipv4, "192.0.2.1", test::free_port()},
                                          [] { return core::Status{}; });
    REQUIRE_FALSE(not_here);
    CHECK_THAT(not_here.error().message(), Catch::Contains("bind: Cannot assign requested address"));
}
