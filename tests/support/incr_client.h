// SPDX-License-Identifier: GPL-2.0-or-later
// The client whose view decides whether anything the world saw was lost: it INCRs one counter on
// a console as fast as the replies come and counts what it sent and what was acknowledged. The
// counter starts at 0 and only this client increments it, so after any failure the surviving
// side must hold a value v with acked <= v <= sent.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "tests/support/test_net.h"

namespace colod::test {

class IncrClient {
public:
    using Clock = std::chrono::steady_clock;

    IncrClient() = default;
    IncrClient(const IncrClient&) = delete;
    IncrClient& operator=(const IncrClient&) = delete;
    ~IncrClient() { join(); }

    // `reply_timeout`: how long one INCR may wait before the client gives up (a held output
    // waits for the secondary; a dead primary never answers). `ignore`: lines that are not
    // replies (a Linux guest's kernel messages on the same console), skipped.
    void start(LineClient client, std::string key = "counter",
               std::chrono::milliseconds reply_timeout = std::chrono::seconds(5),
               std::function<bool(std::string_view)> ignore = {}) {
        m_thread = std::thread([this, c = std::move(client), key, reply_timeout, ignore]() mutable {
            while (!m_stop) {
                auto begin = Clock::now();
                ++m_sent;
                auto reply = c.command("INCR " + key, reply_timeout);
                while (reply && ignore && ignore(*reply))
                    reply = c.line(reply_timeout);
                if (!reply) {
                    m_broken = true;
                    return;
                }
                if (reply->empty() || reply->find_first_not_of("0123456789") != std::string::npos) {
                    m_bad_reply = true;
                    return;
                }
                uint64_t value = std::stoull(*reply);
                if (value != m_acked + 1)
                    m_out_of_order = true;  // a reply that skips or repeats a value
                m_acked = value;
                auto waited = static_cast<uint64_t>(
                    std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - begin).count());
                if (waited > m_max_wait_us)
                    m_max_wait_us = waited;
            }
        });
    }
    void join() {
        m_stop = true;
        if (m_thread.joinable())
            m_thread.join();
    }
    bool running() const { return m_thread.joinable() && !m_broken && !m_bad_reply; }

    uint64_t sent() const { return m_sent; }
    uint64_t acked() const { return m_acked; }
    uint64_t max_wait_us() const { return m_max_wait_us; }
    void reset_max_wait() { m_max_wait_us = 0; }
    bool bad_reply() const { return m_bad_reply; }
    bool out_of_order() const { return m_out_of_order; }
    bool broken() const { return m_broken; }

private:
    std::thread m_thread;
    std::atomic<bool> m_stop{false};
    std::atomic<uint64_t> m_sent{0}, m_acked{0}, m_max_wait_us{0};
    std::atomic<bool> m_bad_reply{false}, m_out_of_order{false}, m_broken{false};
};

// The counter's value as a console shows it (GET; NIL is 0). Nullopt if there is no answer.
inline std::optional<uint64_t> read_counter(LineClient& console, const std::string& key = "counter") {
    auto reply = console.command("GET " + key);
    if (!reply)
        return std::nullopt;
    if (*reply == "NIL")
        return 0;
    if (reply->empty() || reply->find_first_not_of("0123456789") != std::string::npos)
        return std::nullopt;
    return std::stoull(*reply);
}

}  // namespace colod::test
