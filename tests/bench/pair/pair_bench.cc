// SPDX-License-Identifier: GPL-2.0-or-later
// The pair end to end, real daemons on this host (loopback), the embedded kvstore guest:
//   1. failover time: kill -9 of the primary until the secondary's console answers PING, over
//      20 kills (target: heartbeat-timeout + 50 ms), beside the secondary's own figure (the
//      failover-done record's DURATION_MS); and a frozen primary (SIGSTOP: no FIN, found by
//      the heartbeat timeout), the way a hung or unplugged host looks;
//   2. checkpoint pause against dirty pages: CHURN n for n = 0, 10, 100, 1000 pages a tick,
//      pause p50/p99 and dirty pages from `coloctl status --json`, and the same per checkpoint
//      from the primary's debug records over the measured window only;
//   3. kvstore INCR throughput (one client, each request waits for its reply) and reply latency,
//      protected at checkpoint-interval 10, 50 and 100 ms and in colo mode, against
//      `colod-primary --standalone` in the same run.
// A benchmark, not a test (not registered with CTest); about three minutes.
// Usage: pair_bench [Catch2 test spec: "[failover]", "[pause]", "[incr]"]
//   COLOD_BENCH_QUICK=1  fewer kills and shorter windows (a smoke run, figures not meaningful)
//   COLOD_BENCH_KILLS=N  kills for the failover table (default 20)
//   COLOD_KEEP_TEST_DIRS=1  keep each pair's directory (config, key, daemon logs) to rerun by hand
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <regex>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "tests/support/bench.h"
#include "tests/support/pause_table.h"
#include "tests/support/pair.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;
using namespace colod::test::bench;

namespace {

void print_reproduce(const std::string& spec, const PairOptions& options, const std::string& what) {
    fmt::print("reproduce: COLOD_KEEP_TEST_DIRS=1 {} \"{}\"\n", COLOD_PAIR_BENCH_BIN, spec);
    fmt::print("  pair: memory {}, image {}, checkpoint-interval {}, heartbeat-interval {}, heartbeat-timeout {}, "
               "loopback, {} backend\n",
               options.memory, options.image, options.checkpoint_interval, options.heartbeat_interval,
               options.heartbeat_timeout, test_backend());
    std::ifstream loadavg("/proc/loadavg");
    std::string load;
    std::getline(loadavg, load);
    fmt::print("  host: {} cores, load average {} (other work on the host moves these figures)\n",
               std::thread::hardware_concurrency(), load.substr(0, load.find(' ', load.find(' ', load.find(' ') + 1) + 1)));
    fmt::print("  by hand: colod-secondary --config DIR/demo.conf & colod-primary --config DIR/demo.conf &\n");
    fmt::print("           {}\n", what);
}

// Starts both daemons and waits until the pair is protected.
void start_protected(Pair& pair) {
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));
    REQUIRE(pair.wait_state(Side::Secondary, "standby"));
}

// Milliseconds from `start` until the console on `side` answers PING (negative: not within `timeout`).
double console_answers_ms(Pair& pair, Side side, Clock::time_point start, std::chrono::milliseconds timeout) {
    return bench::console_answers_ms(pair.console_ip(side), pair.console_port(side), start, timeout);
}

// The DURATION_MS of the failover-done record in a secondary's log.
std::optional<double> failover_done_ms(const std::string& log) {
    std::smatch m;
    static const std::regex done(R"(\[failover-done\]:.* DURATION_MS=([0-9.]+))");
    if (!std::regex_search(log, m, done))
        return std::nullopt;
    return std::stod(m[1].str());
}

double millis(const std::string& duration) {
    // The option strings here are all "<N>ms".
    return std::stod(duration);
}

struct FailoverRow {
    std::vector<double> client_ms, reported_ms;
    int rounds = 0, failed = 0;
};

FailoverRow measure_failovers(int sig, int rounds, const PairOptions& options) {
    FailoverRow row;
    std::mt19937 rng(12345 + static_cast<unsigned>(sig));
    for (int round = 0; round < rounds; ++round) {
        Pair pair(options);
        start_protected(pair);
        {
            auto c = pair.console(Side::Primary);
            REQUIRE(c);
            REQUIRE(c->command("CHURN 10") == "OK");  // checkpoints carry pages, as with a working guest
        }
        // Land the kill at a random phase of the checkpoint cycle (a deliberate random wait, not
        // a synchronisation).
        std::this_thread::sleep_for(std::chrono::milliseconds(200 + rng() % 200));
        auto killed = Clock::now();
        ::kill(pair.primary()->pid(), sig);
        double answered = console_answers_ms(pair, Side::Secondary, killed, std::chrono::seconds(10));
        ++row.rounds;
        if (answered < 0) {
            ++row.failed;
            continue;
        }
        row.client_ms.push_back(answered);
        REQUIRE(eventually([&] { return failover_done_ms(pair.read_log("secondary")).has_value(); }));
        row.reported_ms.push_back(*failover_done_ms(pair.read_log("secondary")));
        if (sig == SIGSTOP)
            pair.primary()->signal(SIGKILL);  // a stopped process takes SIGKILL; reaped by the harness
    }
    return row;
}

}  // namespace

TEST_CASE("failover time", "[failover]") {
    PairOptions options;  // checkpoint 20ms, heartbeat 20ms / timeout 200ms
    int kills = env_int("COLOD_BENCH_KILLS", quick() ? 3 : 20);
    int stops = quick() ? 2 : 10;
    double target = millis(options.heartbeat_timeout) + 50;
    print_reproduce("[failover]", options,
                    "CHURN 10 on the primary's console; kill -9 PRIMARY_PID; PING the secondary's console until PONG");

    auto killed = measure_failovers(SIGKILL, kills, options);
    auto frozen = measure_failovers(SIGSTOP, stops, options);

    fmt::print("\nFailover: signal to the primary -> the secondary's console answers PING (ms); target <= "
               "heartbeat-timeout + 50 = {:.0f} ms\n",
               target);
    fmt::print("| primary fault                       | rounds | no takeover | client p50 | client p99 | client max | "
               "failover-done DURATION_MS p50 | p99  | within target |\n");
    fmt::print("|-------------------------------------|--------|-------------|------------|------------|------------|"
               "-------------------------------|------|---------------|\n");
    for (auto [name, row] : {std::pair<const char*, FailoverRow*>{"kill -9 (sockets close: EOF)", &killed},
                             {"SIGSTOP (silent: heartbeat timeout)", &frozen}}) {
        int within = static_cast<int>(
            std::count_if(row->client_ms.begin(), row->client_ms.end(), [&](double ms) { return ms <= target; }));
        fmt::print("| {:<35} | {:>6} | {:>11} | {:>10.1f} | {:>10.1f} | {:>10.1f} | {:>29.1f} | {:>4.1f} | {:>7} of {:<3} |\n",
                   name, row->rounds, row->failed, percentile(row->client_ms, 50), percentile(row->client_ms, 99),
                   percentile(row->client_ms, 100), percentile(row->reported_ms, 50), percentile(row->reported_ms, 99),
                   within, row->rounds);
    }
    fmt::print("(DURATION_MS runs from the secondary's decision to the guest running; the client figure adds the "
               "detection, the console connect and one PING)\n\n");
    CHECK(killed.failed == 0);
    CHECK(frozen.failed == 0);
}

TEST_CASE("checkpoint pause against dirty pages", "[pause]") {
    PairOptions options;
    options.checkpoint_interval = "20ms";
    options.env = {"COLOD_LOG_LEVEL=debug"};
    std::chrono::milliseconds warm_up = std::chrono::seconds(1);
    std::chrono::milliseconds window = quick() ? std::chrono::seconds(2) : std::chrono::seconds(8);
    print_reproduce("[pause]", options,
                    "CHURN n on the primary's console; coloctl --config DIR/demo.conf --role primary status --json "
                    "(COLOD_LOG_LEVEL=debug in the primary's environment for the per-checkpoint records)");
    std::vector<PauseRow> rows;
    for (uint64_t n : {0, 10, 100, 1000}) {
        Pair pair(options);
        start_protected(pair);
        auto c = pair.console(Side::Primary);
        REQUIRE(c);
        rows.push_back(measure_pause_row(pair, *c, n, warm_up, window));
    }
    print_pause_table(rows, options.checkpoint_interval, warm_up, window);
}

namespace {

struct IncrRun {
    std::string name;
    double ops_per_s = 0, p50_ms = 0, p99_ms = 0, max_ms = 0;
    size_t ops = 0;
};

IncrRun incr_run(const std::string& name, LineClient& c, std::chrono::milliseconds duration) {
    for (int i = 0; i < 5; ++i)  // first replies (cold paths) are not part of the figure
        REQUIRE(c.command("INCR counter"));
    std::vector<double> latencies;
    auto start = Clock::now();
    while (Clock::now() - start < duration) {
        auto sent = Clock::now();
        auto reply = c.command("INCR counter", std::chrono::seconds(10));
        REQUIRE(reply);
        REQUIRE(reply->find_first_not_of("0123456789") == std::string::npos);
        latencies.push_back(ms_since(sent));
    }
    IncrRun run;
    run.name = name;
    run.ops = latencies.size();
    run.ops_per_s = static_cast<double>(latencies.size()) / (ms_since(start) / 1000.0);
    run.p50_ms = percentile(latencies, 50);
    run.p99_ms = percentile(latencies, 99);
    run.max_ms = percentile(latencies, 100);
    return run;
}

}  // namespace

TEST_CASE("kvstore INCR throughput and latency, protected (checkpoint and colo mode) against standalone", "[incr]") {
    PairOptions base;
    PairOptions shown = base;
    shown.checkpoint_interval = "10ms | 50ms | 100ms (per row)";
    print_reproduce("[incr]", shown,
                    "one client on the primary's console: INCR counter, wait for the reply, repeat; standalone: "
                    "colod-primary --config DIR/demo.conf --standalone");
    std::vector<IncrRun> runs;
    {
        Pair pair(base);
        pair.start_primary({"--standalone"});
        auto c = pair.console(Side::Primary);
        REQUIRE(c);
        runs.push_back(incr_run("standalone", *c, std::chrono::seconds(quick() ? 1 : 4)));
    }
    for (std::string interval : {"10ms", "50ms", "100ms"}) {
        PairOptions options = base;
        options.checkpoint_interval = interval;
        Pair pair(options);
        start_protected(pair);
        auto c = pair.console(Side::Primary);
        REQUIRE(c);
        // At least ~100 replies at the longest interval (one reply per checkpoint).
        auto duration = std::chrono::milliseconds(quick() ? 1000 : static_cast<int>(millis(interval)) * 110 + 1000);
        runs.push_back(incr_run("protected, checkpoint-interval " + interval, *c, duration));
    }
    {
        // COLO: both guests run; a reply leaves once the secondary's guest wrote the same bytes.
        PairOptions options = base;
        options.mode = "colo";
        options.checkpoint_interval = "100ms";
        Pair pair(options);
        start_protected(pair);
        auto c = pair.console(Side::Primary);
        REQUIRE(c);
        runs.push_back(incr_run("colo, checkpoint-interval 100ms", *c, std::chrono::seconds(quick() ? 1 : 4)));
    }
    const IncrRun& alone = runs.front();
    fmt::print("\nkvstore INCR, one client, each request waits for its reply\n");
    fmt::print("| run                                   | replies | ops/s    | x standalone | p50 ms  | p99 ms  | max ms  "
               "| p50 x standalone |\n");
    fmt::print("|---------------------------------------|---------|----------|--------------|---------|---------|--------"
               "-|------------------|\n");
    for (const auto& r : runs)
        fmt::print("| {:<37} | {:>7} | {:>8.1f} | {:>12.4f} | {:>7.3f} | {:>7.3f} | {:>7.3f} | {:>16.1f} |\n", r.name, r.ops,
                   r.ops_per_s, r.ops_per_s / alone.ops_per_s, r.p50_ms, r.p99_ms, r.max_ms, r.p50_ms / alone.p50_ms);
    fmt::print("(checkpoint mode holds a reply until the checkpoint after it is loaded on the secondary: one reply per "
               "checkpoint for a client that waits; colo mode releases it when both guests answered the same; "
               "target: colo p50 within 2x standalone)\n\n");
}
