// SPDX-License-Identifier: GPL-2.0-or-later
// The crash-consistency check both modes share: a client INCRs, the primary dies, the survivor
// must hold every acknowledged INCR and none that was never sent.
#pragma once

#include <catch2/catch.hpp>

#include <random>
#include <thread>

#include "tests/support/incr_client.h"
#include "tests/support/pair.h"

namespace colod::test {

// The counter's value on a console (GET; NIL is 0); the console must answer.
inline uint64_t get_counter(LineClient& c) {
    auto value = read_counter(c);
    REQUIRE(value);
    return *value;
}

struct KillRounds {
    int rounds = 0, takeovers = 0, before_protection = 0, violations = 0;
    uint64_t checked_acks = 0;
};

// Runs `rounds` rounds of: start a pair, have a client INCR a counter through the primary's
// console as fast as replies come, SIGKILL the primary at a random moment (a quarter of the time
// during the initial copy), then check on the secondary's console that the counter holds at
// least every acknowledged INCR and at most every INCR sent.
inline KillRounds run_kill_rounds(const PairOptions& options, int rounds) {
    std::mt19937 rng(std::random_device{}());
    int takeovers = 0, before_protection = 0, violations = 0;
    uint64_t checked_acks = 0;
    for (int round = 0; round < rounds; ++round) {
        Pair pair(options);
        pair.start_secondary();
        pair.start_primary();
        bool during_sync = round % 4 == 0;  // a quarter of the kills land while the copy is running
        IncrClient client;
        if (during_sync) {
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 400));
        } else {
            REQUIRE(pair.wait_state(Pair::Side::Primary, "protected"));
            auto console = pair.console(Pair::Side::Primary);
            REQUIRE(console);
            client.start(std::move(*console));
            // The kill point: anywhere in the next 1.5 s of checkpoints, transfers and applies.
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 1500));
        }
        pair.primary()->signal(SIGKILL);
        REQUIRE(pair.primary()->exit_code() == 128 + SIGKILL);
        client.join();
        uint64_t sent = client.sent(), acked = client.acked();
        bool took_over = pair.wait_state(Pair::Side::Secondary, "active", std::chrono::seconds(5));
        if (!took_over) {
            // Only allowed when the secondary never held a complete checkpoint.
            CHECK(during_sync);
            ++before_protection;
            continue;
        }
        ++takeovers;
        auto console = pair.console(Pair::Side::Secondary);
        REQUIRE(console);
        uint64_t value = get_counter(*console);
        INFO("round " << round << ": sent " << sent << ", acknowledged " << acked << ", secondary has " << value);
        if (value < acked || value > sent)
            ++violations;
        CHECK(value >= acked);
        CHECK(value <= sent);
        CHECK(console->command("INCR counter") == std::to_string(value + 1));
        checked_acks += acked;
    }
    WARN("mode " << options.mode << ": kill points: " << rounds << ", takeovers: " << takeovers
                  << ", killed before protection: " << before_protection
                  << ", acknowledged INCRs checked: " << checked_acks << ", violations: " << violations);
    return KillRounds{rounds, takeovers, before_protection, violations, checked_acks};
}


}  // namespace colod::test
