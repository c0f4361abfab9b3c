// SPDX-License-Identifier: GPL-2.0-or-later
// Kill and stall points across both roles and every step of the protocol, each with a client
// INCRing through the primary's console (the daemons are built with COLOD_FAULT_POINTS):
//
//   - kills: a COLOD_FAULT point (the daemon SIGKILLs itself there) or a SIGKILL from outside
//     at a random moment. After a primary's death the secondary must take over (if it ever held
//     a complete checkpoint) with a counter v, acked <= v <= sent; after a secondary's death the
//     primary must serve on, unprotected, losing nothing, and protect the guest again when a
//     new secondary comes (both sides then hold the same memory).
//   - stalls: the daemon's thread sleeps at the point for longer than the heartbeat timeout.
//     Heartbeats come from their own threads, so by the rules the pair stays protected: no
//     peer-lost, no failover, the client's replies are only late; afterwards both sides hold
//     the same memory.
//
// COLOD_RELIABILITY_KILLS (default: one per kind, 14) and COLOD_RELIABILITY_STALLS (default 4;
// 12 or more covers every point) set the counts; tests/reliability/soak.sh runs hundreds.
#include <catch2/catch.hpp>

#include <algorithm>
#include <csignal>
#include <numeric>
#include <thread>

#include "tests/reliability/common.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct FaultKind {
    std::string name;  // the table row
    Side victim;
    std::string point;  // a COLOD_FAULT point, or empty for a SIGKILL from outside
    int max_pass;       // the point fires at a random pass 1..max_pass
};

// Checkpoints come every 20 ms, so every pass number below is reached within about a second of
// protection. primary.precopy passes once per sync (a 64 MiB guest is one pre-copy transfer);
// primary.paused@1 is the sync's final stop; secondary.frame counts pre-copy frames too.
const std::vector<FaultKind>& kill_kinds() {
    static const std::vector<FaultKind> kinds = {
        {"kill primary.precopy", Side::Primary, "primary.precopy", 1},
        {"kill primary.paused", Side::Primary, "primary.paused", 40},
        {"kill primary.before-send", Side::Primary, "primary.before-send", 40},
        {"kill primary.sent", Side::Primary, "primary.sent", 40},
        {"kill primary.received", Side::Primary, "primary.received", 40},
        {"kill primary.loaded", Side::Primary, "primary.loaded", 40},
        {"kill primary.released", Side::Primary, "primary.released", 40},
        {"kill secondary.frame", Side::Secondary, "secondary.frame", 40},
        {"kill secondary.staged", Side::Secondary, "secondary.staged", 40},
        {"kill secondary.received", Side::Secondary, "secondary.received", 40},
        {"kill secondary.mid-apply", Side::Secondary, "secondary.mid-apply", 40},
        {"kill secondary.applied", Side::Secondary, "secondary.applied", 40},
        {"SIGKILL primary, random time", Side::Primary, "", 0},
        {"SIGKILL secondary, random time", Side::Secondary, "", 0},
    };
    return kinds;
}

std::string program_name(Side side) { return side == Side::Primary ? "primary" : "secondary"; }

struct RoundResult {
    bool injected = false;
    bool failover = false;
    uint64_t acked_checked = 0;
    uint64_t violations = 0;
    uint64_t peak_kib = 0;
};

// One kill: a fresh pair, the client, the fault, the checks.
RoundResult kill_round(const FaultKind& kind, int round) {
    RoundResult result;
    PairOptions options;
    int pass = kind.point.empty() ? 0 : random_between(1, kind.max_pass);
    std::string spec = kind.point.empty() ? "" : fmt::format("COLOD_FAULT={}:kill@{}", kind.point, pass);
    if (!spec.empty())
        (kind.victim == Side::Primary ? options.primary_env : options.secondary_env).push_back(spec);
    Pair pair(options);
    PeakMemory peak;
    pair.start_secondary();
    pair.start_primary();
    auto console = ready_console(pair, Side::Primary);
    REQUIRE(console);
    IncrClient client;
    client.start(std::move(*console), "counter", 3s);
    Process& victim = kind.victim == Side::Primary ? *pair.primary() : *pair.secondary();

    if (kind.point.empty()) {
        // A random moment in the next 1.5 s of protected checkpoints (a quarter of the rounds:
        // anywhere from the start, sync included).
        if (round % 4 != 0)
            REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
        auto until = Clock::now() + std::chrono::milliseconds(random_between(0, 1500));
        while (Clock::now() < until) {
            sample_memory(pair, peak);
            std::this_thread::sleep_for(20ms);
        }
        victim.signal(SIGKILL);
    } else {
        // The daemon kills itself at the point; it must, within a few seconds.
        bool died = eventually(
            [&] {
                sample_memory(pair, peak);
                return victim.wait(0ms).has_value();
            },
            15s);
        INFO(kind.name << " @" << pass << ": did not fire\n" << pair.read_log(program_name(kind.victim)));
        REQUIRE(died);
        CHECK(fault_fired(pair, program_name(kind.victim), kind.point));
    }
    REQUIRE(victim.exit_code() == 128 + SIGKILL);
    result.injected = true;

    std::string context = fmt::format("round {} ({}{}): ", round, kind.name, pass ? fmt::format(" @{}", pass) : "");
    if (kind.victim == Side::Primary) {
        client.join();
        uint64_t sent = client.sent(), acked = client.acked();
        // The secondary notices at once (the dead primary's socket closed) and decides.
        bool noticed = eventually(
            [&] {
                auto log = pair.read_log("secondary");
                return event_line(log, "peer-lost") || event_line(log, "failover-begin");
            },
            10s);
        bool began = has_event(pair, "secondary", "failover-begin");
        bool took_over = began && pair.wait_state(Side::Secondary, "active", 10s);
        bool synced = has_event(pair, "secondary", "synced");
        sample_memory(pair, peak);
        INFO(context << "secondary log:\n" << pair.read_log("secondary"));
        CHECK(noticed);
        if (!took_over) {
            // Only allowed when the secondary never held a complete checkpoint: nothing to
            // take over from, and by the rules the guest was not protected yet.
            CHECK_FALSE(began);
            CHECK_FALSE(synced);
            if (began || synced || !noticed)
                ++result.violations;
        } else {
            {
                result.failover = true;
                auto on_secondary = ready_console(pair, Side::Secondary);
                REQUIRE(on_secondary);
                auto value = read_counter(*on_secondary);
                REQUIRE(value);
                INFO(context << "sent " << sent << ", acknowledged " << acked << ", the secondary has " << *value);
                CHECK(*value >= acked);
                CHECK(*value <= sent);
                if (*value < acked || *value > sent)
                    ++result.violations;
                CHECK(on_secondary->command("INCR counter") == std::to_string(*value + 1));
                result.acked_checked = acked;
            }
        }
        CHECK_FALSE(client.bad_reply());
        CHECK_FALSE(client.out_of_order());
    } else {
        // The primary serves on: unprotected at once (the dead peer's socket closed), and the
        // client keeps getting replies.
        INFO(context << "primary log:\n" << pair.read_log("primary"));
        bool unprotected = pair.wait_state(Side::Primary, "unprotected", 5s);
        uint64_t acked_at_loss = client.acked();
        bool serving = eventually([&] { return client.acked() > acked_at_loss + 10; }, 10s);
        CHECK(unprotected);
        CHECK(serving);
        if (!unprotected || !serving)
            ++result.violations;
        // A new secondary protects the guest again, with the primary's memory.
        pair.clear_program_env();
        pair.start_secondary();
        bool reprotected = pair.wait_state(Side::Primary, "protected", 30s);
        CHECK(reprotected);
        if (reprotected) {
            auto digests = compare_digests(pair);
            INFO("digests: primary " << digests.primary << ", secondary " << digests.secondary);
            CHECK(digests.equal());
            if (!digests.equal())
                ++result.violations;
        } else {
            ++result.violations;
        }
        sample_memory(pair, peak);
        client.join();
        CHECK_FALSE(client.broken());
        auto check = pair.console(Side::Primary);
        REQUIRE(check);
        auto value = read_counter(*check);
        REQUIRE(value);
        uint64_t sent = client.sent(), acked = client.acked();
        INFO(context << "sent " << sent << ", acknowledged " << acked << ", the primary has " << *value);
        CHECK(*value >= acked);
        CHECK(*value <= sent);
        if (*value < acked || *value > sent)
            ++result.violations;
        result.acked_checked = acked;
        CHECK_FALSE(client.bad_reply());
        CHECK_FALSE(client.out_of_order());
    }
    result.peak_kib = peak.peak_kib();
    return result;
}

}  // namespace

TEST_CASE("kill points on both roles at every protocol step lose no acknowledged INCR", "[reliability][kill]") {
    const auto& kinds = kill_kinds();
    const int rounds = knob("COLOD_RELIABILITY_KILLS", static_cast<int>(kinds.size()));
    uint64_t violations = 0;
    auto started = Clock::now();
    for (int round = 0; round < rounds; ++round) {
        // Every kind in turn, in a shuffled order per cycle.
        static std::vector<size_t> order;
        if (round % static_cast<int>(kinds.size()) == 0) {
            order.resize(kinds.size());
            std::iota(order.begin(), order.end(), size_t{0});
            std::shuffle(order.begin(), order.end(), rng());
        }
        const FaultKind& kind = kinds[order[static_cast<size_t>(round) % kinds.size()]];
        auto r = kill_round(kind, round);
        violations += r.violations;
        ReliabilityReport::instance().add(kind.name, r.injected, r.failover, r.acked_checked, r.violations, r.peak_kib);
    }
    WARN(rounds << " kill points in " << std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - started).count()
                << " s, violations: " << violations);
    CHECK(violations == 0);
}

TEST_CASE("a daemon stalled at any protocol step for longer than the heartbeat timeout leaves the pair protected",
          "[reliability][stall]") {
    // Every point, in a shuffled order; COLOD_RELIABILITY_STALLS of them.
    std::vector<std::string> points = {"primary.precopy",     "primary.paused",      "primary.before-send",
                                       "primary.sent",        "primary.received",    "primary.loaded",
                                       "primary.released",    "secondary.frame",     "secondary.staged",
                                       "secondary.received",  "secondary.mid-apply", "secondary.applied"};
    std::shuffle(points.begin(), points.end(), rng());
    const int count = knob("COLOD_RELIABILITY_STALLS", 4);
    const int stall_ms = 600;  // three heartbeat timeouts
    for (int i = 0; i < count; ++i) {
        const std::string& point = points[static_cast<size_t>(i) % points.size()];
        bool on_primary = point.rfind("primary.", 0) == 0;
        int pass = point == "primary.precopy" ? 1 : random_between(3, 30);
        PairOptions options;
        (on_primary ? options.primary_env : options.secondary_env)
            .push_back(fmt::format("COLOD_FAULT={}:stall={}@{}", point, stall_ms, pass));
        Pair pair(options);
        PeakMemory peak;
        pair.start_secondary();
        pair.start_primary();
        auto console = ready_console(pair, Side::Primary);
        REQUIRE(console);
        IncrClient client;
        client.start(std::move(*console), "counter", 10s);
        std::string name = on_primary ? "primary" : "secondary";
        INFO("stall " << point << " @" << pass << "\nprimary log:\n"
                      << pair.read_log("primary") << "\nsecondary log:\n"
                      << pair.read_log("secondary"));
        REQUIRE(eventually(
            [&] {
                sample_memory(pair, peak);
                return fault_fired(pair, name, point);
            },
            20s));
        // The stall passes; the pair is (still, or after the delayed sync) protected and the
        // client goes on.
        REQUIRE(pair.wait_state(Side::Primary, "protected", 30s));
        uint64_t acked = client.acked();
        REQUIRE(eventually([&] { return client.acked() > acked + 20; }, 20s));
        auto digests = compare_digests(pair);
        INFO("digests: primary " << digests.primary << ", secondary " << digests.secondary);
        CHECK(digests.equal());
        sample_memory(pair, peak);
        client.join();
        std::string primary_log = pair.read_log("primary"), secondary_log = pair.read_log("secondary");
        INFO("final primary log:\n" << primary_log << "\nfinal secondary log:\n" << secondary_log);
        uint64_t violations = 0;
        // By the rules a stall is not a loss: heartbeats went on.
        bool lost = event_line(primary_log, "peer-lost") || event_line(secondary_log, "peer-lost");
        bool failover = static_cast<bool>(event_line(secondary_log, "failover-begin"));
        CHECK_FALSE(lost);
        CHECK_FALSE(failover);
        if (lost || failover || !digests.equal())
            ++violations;
        CHECK_FALSE(client.bad_reply());
        CHECK_FALSE(client.out_of_order());
        auto check = pair.console(Side::Primary);
        REQUIRE(check);
        auto value = read_counter(*check);
        REQUIRE(value);
        CHECK(*value >= client.acked());
        CHECK(*value <= client.sent());
        if (*value < client.acked() || *value > client.sent())
            ++violations;
        // The stall held the client's replies back (output waits for the checkpoint), except
        // where it held nothing the client waited for (the sync, before the client's first
        // protected reply).
        if (point != "primary.precopy" && point != "secondary.frame")
            CHECK(client.max_wait_us() >= static_cast<uint64_t>(stall_ms) * 1000 / 2);
        ReliabilityReport::instance().add("stall " + point + " 600ms", 1, 0, client.acked(), violations,
                                          peak.peak_kib());
    }
}

TEST_CASE("a slow log disk (every record waits 300 ms) on both sides leaves the pair protected and loses nothing",
          "[reliability][stall][log]") {
    PairOptions options;
    options.env.push_back("COLOD_FAULT=log.write:stall=300");
    Pair pair(options);
    PeakMemory peak;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected", 60s));
    auto console = ready_console(pair, Side::Primary, 30s);
    REQUIRE(console);
    IncrClient client;
    client.start(std::move(*console), "counter", 10s);
    // Log records while the client runs: console clients coming and going are logged by the
    // console's thread, a slow checkpoint by the engine's.
    for (int i = 0; i < 5; ++i) {
        auto extra = pair.console(Side::Primary);
        REQUIRE(extra);
        sample_memory(pair, peak);
        std::this_thread::sleep_for(200ms);
    }
    uint64_t acked = client.acked();
    REQUIRE(eventually([&] { return client.acked() > acked + 20; }, 20s));
    auto digests = compare_digests(pair);
    CHECK(digests.equal());
    client.join();
    auto check = pair.console(Side::Primary);
    REQUIRE(check);
    auto value = read_counter(*check);
    REQUIRE(value);
    CHECK(*value >= client.acked());
    CHECK(*value <= client.sent());
    // Let the slow sink catch up before reading the logs.
    std::this_thread::sleep_for(2s);
    std::string primary_log = pair.read_log("primary"), secondary_log = pair.read_log("secondary");
    INFO("primary log:\n" << primary_log << "\nsecondary log:\n" << secondary_log);
    bool lost = event_line(primary_log, "peer-lost") || event_line(secondary_log, "peer-lost");
    CHECK_FALSE(lost);
    CHECK(primary_log.find("console client") != std::string::npos);
    CHECK(primary_log.find("fault point log.write armed") != std::string::npos);
    CHECK(secondary_log.find("fault point log.write armed") != std::string::npos);
    uint64_t violations = (lost || !digests.equal() || *value < client.acked() || *value > client.sent()) ? 1 : 0;
    ReliabilityReport::instance().add("slow log disk, 300 ms per record, both sides", 1, 0, client.acked(), violations,
                                      peak.peak_kib());
}
