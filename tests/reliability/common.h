// SPDX-License-Identifier: GPL-2.0-or-later
// What the reliability tests share: knobs from the environment, log reading, the digest compare
// that proves both sides hold the same memory, and daemon memory sampling.
#pragma once

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include "tests/support/incr_client.h"
#include "tests/support/link_proxy.h"
#include "tests/support/pair.h"
#include "tests/support/proc_stats.h"
#include "tests/support/reliability_report.h"

namespace colod::test {

// An integer knob from the environment (soak.sh sets them; CI uses the defaults).
inline int knob(const char* name, int fallback) {
    const char* value = std::getenv(name);
    return value && *value ? std::atoi(value) : fallback;
}

// One seed per process, printed so that a failing run can be repeated (COLOD_RELIABILITY_SEED).
inline std::mt19937& rng() {
    static std::mt19937 generator = [] {
        unsigned seed = static_cast<unsigned>(knob("COLOD_RELIABILITY_SEED", 0));
        if (seed == 0)
            seed = std::random_device{}();
        std::fprintf(stderr, "[colod reliability] seed %u (COLOD_RELIABILITY_SEED=%u repeats this run)\n", seed, seed);
        return std::mt19937(seed);
    }();
    return generator;
}
inline int random_between(int low, int high) { return std::uniform_int_distribution<int>(low, high)(rng()); }

inline size_t count_events(const std::string& log, const std::string& event) {
    size_t count = 0;
    for (auto at = log.find("[" + event + "]:"); at != std::string::npos; at = log.find("[" + event + "]:", at + 1))
        ++count;
    return count;
}
// Whether a COLOD_FAULT point fired in that daemon ("fault point NAME fires: ACTION").
inline bool fault_fired(Pair& pair, const std::string& name, const std::string& point) {
    return pair.read_log(name).find("fault point " + point + " fires") != std::string::npos;
}

// The primary takes a checkpoint and holds its guest at it; the secondary reports the checkpoint
// it committed. Equal answers ("SEQ DIGEST", a CRC per page folded in page order) mean both sides
// hold the same memory page for page. The guest is resumed before returning.
struct DigestCompare {
    bool answered = false;
    std::string primary, secondary;
    bool equal() const { return answered && primary == secondary; }
};
inline DigestCompare compare_digests(Pair& pair, Pair::Side active = Pair::Side::Primary) {
    Pair::Side standby = active == Pair::Side::Primary ? Pair::Side::Secondary : Pair::Side::Primary;
    DigestCompare result;
    auto held = pair.control(active, "digest", 20000);
    if (!held)
        return result;
    auto other = pair.control(standby, "digest");
    pair.control(active, "resume");
    if (!other)
        return result;
    result.answered = true;
    result.primary = *held;
    result.secondary = *other;
    return result;
}

// Samples both daemons' (and any pid's) VmHWM.
inline void sample_memory(Pair& pair, PeakMemory& peak) {
    if (pair.primary())
        peak.sample(pair.primary()->pid());
    if (pair.secondary())
        peak.sample(pair.secondary()->pid());
}

// Waits for a console on `side` that answers PING, and returns it with every reply read: the
// next line on it answers the caller's next command. A guest that is slow to answer (it just took
// over) gets its PING again on the same connection, and each line sent gets exactly one reply, so
// the console is ready when every PING has had its reply and the last one is PONG. (A new
// connection per try would leave an older PING's PONG in flight, to be read as the answer to
// whatever the caller sends next.)
//
// A line the guest had already taken in when its state was checkpointed (an INCR of the
// primary's client) is answered after a takeover too, onto whichever console client is there:
// one line more than the PINGs asked for, which would leave the last PONG to be read as the
// answer to the caller's command. So a PONG is followed by a GET of a key nobody sets: it
// answers NIL, which no other line here does, and once that NIL is read the console is in step.
inline bool console_in_step(LineClient& console, std::chrono::steady_clock::time_point deadline) {
    if (!console.send("GET colod-test-in-step\n"))
        return false;
    while (std::chrono::steady_clock::now() < deadline) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        auto reply = console.line(std::min<std::chrono::milliseconds>(left, std::chrono::seconds(3)));
        if (!reply)
            return false;
        if (*reply == "NIL")
            return true;
    }
    return false;
}
inline std::optional<LineClient> ready_console(Pair& pair, Pair::Side side,
                                               std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
    auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
    while (std::chrono::steady_clock::now() < deadline) {
        auto c = pair.console(side, std::chrono::milliseconds(200));
        if (!c)
            continue;
        int unanswered = 0;
        while (!c->ended() && std::chrono::steady_clock::now() < deadline) {
            if (!c->send("PING\n"))
                break;
            ++unanswered;
            while (auto reply = c->line(std::chrono::seconds(3))) {
                unanswered = std::max(unanswered - 1, 0);
                if (unanswered == 0) {
                    if (*reply == "PONG" && console_in_step(*c, deadline))
                        return c;
                    break;  // a reply to a line the guest saw joined to an older partial one
                }
            }
        }
    }
    return std::nullopt;
}

// The pair's harness writes primary.conf only when primary_peer_endpoint is set, and it picks
// the secondary's port itself, which the proxy needs first. So the pair is made with a
// placeholder endpoint, the proxy started, and primary.conf pointed at the proxy before the
// primary starts.
inline constexpr const char* k_placeholder_endpoint = "127.0.0.1:1";

inline PairOptions proxied_options() {
    PairOptions options;
    options.primary_peer_endpoint = k_placeholder_endpoint;
    return options;
}

inline std::unique_ptr<LinkProxy> put_proxy_between(Pair& pair) {
    auto proxy = LinkProxy::start("127.0.0.1", "127.0.0.1", pair.replication_port(Pair::Side::Secondary));
    REQUIRE(proxy);
    std::string path = pair.config(Pair::Side::Primary);
    std::string text;
    {
        std::ifstream in(path);
        text.assign(std::istreambuf_iterator<char>(in), {});
    }
    std::string placeholder = fmt::format("replication = {}\n", k_placeholder_endpoint);
    auto at = text.find(placeholder);
    REQUIRE(at != std::string::npos);
    text.replace(at, placeholder.size(), fmt::format("replication = {}\n", proxy->endpoint()));
    std::ofstream(path, std::ios::trunc) << text;
    return proxy;
}

}  // namespace colod::test
