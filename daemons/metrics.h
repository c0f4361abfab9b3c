// SPDX-License-Identifier: GPL-2.0-or-later
// The metrics endpoint (`metrics = ADDRESS:PORT` in the host's section): Prometheus scrapes
// `GET /metrics` over HTTP/1.x and gets the daemon's status in the text format
// (daemons/metrics_format.h). HTTP is Boost.Beast's; this file only decides what is answered.
//
// The server runs on a thread of its own and never slows the guest or the replication: it takes
// a snapshot of the status (the snapshot function copies it under the engines' locks and
// returns), renders it, and only then writes to the socket, with no lock held. Bad clients
// cannot make it grow: at most Limits::max_connections at a time (any beyond are closed at
// once), a request's header at most Limits::max_header_bytes (answered 431), and every request
// gets Limits::request_timeout from its first byte to the last byte of its answer (then the
// connection is closed). Requests with a body are answered and the connection closed without
// reading it. Scrapes in quick succession share one snapshot (Limits::snapshot_reuse).
//
//   GET or HEAD /metrics  -> 200, Content-Type: text/plain; version=0.0.4; charset=utf-8
//   any other path        -> 404
//   another method        -> 405, Allow: GET, HEAD
//   a header too large    -> 431, then close
//   not HTTP              -> 400, then close
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "base/result.h"
#include "config/endpoint.h"
#include "core/status.h"

namespace colod::daemons {

class MetricsServer {
public:
    // Called on the server's thread once per scrape; must not block for long (Node::status
    // takes each engine's state lock only to copy figures).
    using Snapshot = std::function<core::Status()>;

    struct Limits {
        size_t max_connections = 16;
        size_t max_header_bytes = 8 * 1024;
        std::chrono::milliseconds request_timeout{5000};
        // Scrapes this close together get the same rendering: however fast clients ask, the
        // daemon's status is copied at most ten times a second.
        std::chrono::milliseconds snapshot_reuse{100};
    };

    // Binds `endpoint` (port 0: any free port, for tests) and starts serving. A bind failure
    // is an error naming the address and the reason (the caller names the config key).
    static base::Result<std::unique_ptr<MetricsServer>> create(const config::Endpoint& endpoint, Snapshot snapshot,
                                                               Limits limits);
    static base::Result<std::unique_ptr<MetricsServer>> create(const config::Endpoint& endpoint, Snapshot snapshot) {
        return create(endpoint, std::move(snapshot), Limits{});
    }
    ~MetricsServer();
    MetricsServer(const MetricsServer&) = delete;
    MetricsServer& operator=(const MetricsServer&) = delete;

    // Closes the listener and every connection and joins the thread; the snapshot function is
    // never called after stop() returns. Idempotent.
    void stop();

    // The port it listens on.
    uint16_t port() const;

    struct State;  // Beast and Asio stay in metrics.cc

private:
    explicit MetricsServer(std::unique_ptr<State> state);
    std::unique_ptr<State> m_state;
};

}  // namespace colod::daemons
