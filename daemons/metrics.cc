// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/metrics.h"

#include <array>
#include <atomic>
#include <chrono>
#include <exception>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "base/events.h"
#include "base/log.h"
#include "base/thread_name.h"
#include "daemons/metrics_format.h"

namespace colod::daemons {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using base::Event;
using base::Level;

// After an answer that ends the connection with request bytes still coming (a header too
// large, a body not read), the rest is read and dropped for a while before the socket is closed:
// closing with unread data makes the kernel send a reset, which can destroy the answer before
// the client reads it. At most this much is dropped, within the request's deadline.
constexpr size_t k_max_drained = 64 * 1024;

class Connection;

}  // namespace

// Everything the server's thread touches. Connections are only created, counted and closed on
// that thread; stop() posts the shutdown to it.
struct MetricsServer::State {
    State(Snapshot take_snapshot, Limits given) : snapshot(std::move(take_snapshot)), limits(given) {}

    void accept();
    void shutdown();

    // The last rendering and when it was made (the server's thread only).
    const std::string& metrics() {
        auto now = std::chrono::steady_clock::now();
        if (!rendered || now - rendered_at >= limits.snapshot_reuse) {
            rendered.reset();  // a snapshot that throws leaves no stale text behind
            rendered = metrics_text(snapshot());
            rendered_at = now;
        }
        return *rendered;
    }

    Snapshot snapshot;
    Limits limits;
    std::optional<std::string> rendered;
    std::chrono::steady_clock::time_point rendered_at;
    std::set<Connection*> connections;  // the server's thread only
    std::atomic<bool> stopped{false};
    uint16_t port = 0;
    asio::io_context io{1};
    tcp::acceptor acceptor{io};
    asio::steady_timer retry{io};  // after an accept error (EMFILE and the like)
    std::thread thread;
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
public:
    Connection(MetricsServer::State& server, tcp::socket socket)
        : m_server(server), m_stream(std::move(socket)), m_buffer(server.limits.max_header_bytes) {
        m_server.connections.insert(this);
    }
    ~Connection() { m_server.connections.erase(this); }

    void start() { read(); }
    void close() {
        beast::error_code ignored;
        m_stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        m_stream.close();
    }

private:
    void read() {
        m_parser.emplace();
        m_parser->header_limit(static_cast<std::uint32_t>(m_server.limits.max_header_bytes));
        // The deadline covers the whole request: its header arriving and the answer going out.
        m_stream.expires_after(m_server.limits.request_timeout);
        http::async_read_header(
            m_stream, m_buffer, *m_parser,
            [self = shared_from_this()](beast::error_code error, size_t) { self->on_header(error); });
    }

    void on_header(beast::error_code error) {
        if (error == http::error::end_of_stream || error == asio::error::operation_aborted ||
            error == beast::error::timeout)
            return close();  // the client is done, too slow, or the server stops
        if (error == http::error::header_limit || error == http::error::buffer_overflow)
            return answer_error(http::status::request_header_fields_too_large, "request header too large\n");
        if (error) {
            // Not HTTP: a 400. A connection that broke: nobody to answer.
            if (error.category() == http::make_error_code(http::error::bad_method).category())
                return answer_error(http::status::bad_request, "bad request\n");
            return close();
        }
        const auto& request = m_parser->get();
        // A body is never read: answer and close.
        bool keep_alive = request.keep_alive() && m_parser->is_done();
        m_response = {};
        m_response.version(request.version());
        m_response.set(http::field::server, "colod");
        std::string_view target(request.target().data(), request.target().size());
        std::string_view path = target.substr(0, target.find('?'));
        if (path != "/metrics") {
            plain(http::status::not_found, "not found: the metrics are at /metrics\n");
        } else if (request.method() != http::verb::get && request.method() != http::verb::head) {
            plain(http::status::method_not_allowed, "method not allowed: use GET\n");
            m_response.set(http::field::allow, "GET, HEAD");
        } else {
            std::string text;
            try {
                text = m_server.metrics();
            } catch (const std::exception& e) {
                base::log_limited("metrics-render", std::chrono::minutes(1), Level::Error, Event::Error,
                                  fmt::format("metrics: cannot render the status: {}", e.what()));
                plain(http::status::internal_server_error, "cannot render the metrics\n");
                return write(keep_alive);
            }
            m_response.result(http::status::ok);
            m_response.set(http::field::content_type,
                           beast::string_view(k_metrics_content_type.data(), k_metrics_content_type.size()));
            m_response.set(http::field::cache_control, "no-store");
            if (request.method() == http::verb::head) {
                m_response.content_length(text.size());
            } else {
                m_response.body() = std::move(text);
                m_response.prepare_payload();
            }
        }
        write(keep_alive);
    }

    void plain(http::status status, std::string_view body) {
        m_response.result(status);
        m_response.set(http::field::content_type, "text/plain; charset=utf-8");
        m_response.body() = std::string(body);
        m_response.prepare_payload();
    }

    // Answers a request that cannot be read on (too large, not HTTP), then drains and closes.
    void answer_error(http::status status, std::string_view body) {
        m_response = {};
        m_response.version(11);
        m_response.set(http::field::server, "colod");
        plain(status, body);
        write(false);
    }

    void write(bool keep_alive) {
        m_response.keep_alive(keep_alive);
        http::async_write(m_stream, m_response,
                          [self = shared_from_this(), keep_alive](beast::error_code error, size_t) {
                              self->on_write(error, keep_alive);
                          });
    }

    void on_write(beast::error_code error, bool keep_alive) {
        if (error)
            return close();
        if (keep_alive)
            return read();
        // Tell the client we are done, then drop what it still sends until it closes too.
        beast::error_code ignored;
        m_stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
        drain();
    }

    void drain() {
        m_stream.async_read_some(asio::buffer(m_scratch),
                                 [self = shared_from_this()](beast::error_code error, size_t n) {
                                     self->m_drained += n;
                                     if (error || self->m_drained > k_max_drained)
                                         return self->close();
                                     self->drain();
                                 });
    }

    MetricsServer::State& m_server;
    beast::tcp_stream m_stream;
    beast::flat_buffer m_buffer;
    std::optional<http::request_parser<http::empty_body>> m_parser;
    http::response<http::string_body> m_response;
    std::array<char, 1024> m_scratch{};
    size_t m_drained = 0;
};

}  // namespace

void MetricsServer::State::accept() {
    acceptor.async_accept([this](beast::error_code error, tcp::socket socket) {
        if (error == asio::error::operation_aborted || !acceptor.is_open())
            return;  // stopping
        if (error) {
            // Out of file descriptors or the like: try again shortly rather than spin.
            base::log_limited("metrics-accept", std::chrono::minutes(1), Level::Warning, Event::None,
                              fmt::format("metrics: accept failed: {}", error.message()));
            retry.expires_after(std::chrono::milliseconds(100));
            retry.async_wait([this](beast::error_code waited) {
                if (!waited)
                    accept();
            });
            return;
        }
        if (connections.size() >= limits.max_connections) {
            beast::error_code ignored;
            socket.close(ignored);  // over the limit: closed at once, nothing read or written
        } else {
            std::make_shared<Connection>(*this, std::move(socket))->start();
        }
        accept();
    });
}

void MetricsServer::State::shutdown() {
    beast::error_code ignored;
    acceptor.close(ignored);
    retry.cancel();
    // Each connection's pending operation ends with operation_aborted and drops it.
    for (Connection* connection : std::set<Connection*>(connections))
        connection->close();
}

base::Result<std::unique_ptr<MetricsServer>> MetricsServer::create(const config::Endpoint& endpoint, Snapshot snapshot,
                                                                   Limits limits) {
    auto state = std::make_unique<State>(std::move(snapshot), limits);
    beast::error_code error;
    auto address = asio::ip::make_address(endpoint.host, error);
    if (error)
        return base::Error::make(base::Errc::Invalid, "cannot listen on {}: {}", endpoint.to_string(), error.message());
    tcp::endpoint where(address, endpoint.port);
    auto failed = [&](std::string_view step) {
        return base::Error(base::Errc::System,
                           fmt::format("cannot listen on {}: {}: {}", endpoint.to_string(), step, error.message()),
                           error.value());
    };
    if (state->acceptor.open(where.protocol(), error); error)
        return failed("socket");
    if (state->acceptor.set_option(asio::socket_base::reuse_address(true), error); error)
        return failed("SO_REUSEADDR");
    if (state->acceptor.bind(where, error); error)
        return failed("bind");
    if (state->acceptor.listen(asio::socket_base::max_listen_connections, error); error)
        return failed("listen");
    state->port = state->acceptor.local_endpoint(error).port();
    state->accept();
    State* running = state.get();
    state->thread = base::named_thread("metrics", [running] {
        for (;;) {
            try {
                running->io.run();
                return;
            } catch (const std::exception& e) {
                // A handler threw (out of memory, most likely): that connection is gone, the
                // server goes on.
                base::log_limited("metrics-thread", std::chrono::minutes(1), Level::Error, Event::Error,
                                  fmt::format("metrics: {}", e.what()));
            }
        }
    });
    return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(state)));
}

MetricsServer::MetricsServer(std::unique_ptr<State> state) : m_state(std::move(state)) {}

MetricsServer::~MetricsServer() {
    stop();
}

void MetricsServer::stop() {
    if (m_state->stopped.exchange(true))
        return;
    asio::post(m_state->io, [state = m_state.get()] { state->shutdown(); });
    // run() returns once the listener and every connection are closed and their handlers ran.
    if (m_state->thread.joinable())
        m_state->thread.join();
}

uint16_t MetricsServer::port() const {
    return m_state->port;
}

}  // namespace colod::daemons
