// SPDX-License-Identifier: GPL-2.0-or-later
// What the pair benchmarks share: the quick (smoke) switch, percentiles, the primary's
// per-checkpoint debug records, and "how long until a console answers PING".
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/pair.h"

namespace colod::test::bench {

using Clock = std::chrono::steady_clock;

// COLOD_BENCH_QUICK=1: the smoke run CTest does (figures printed, not meaningful).
inline bool quick() {
    const char* env = std::getenv("COLOD_BENCH_QUICK");
    return env && std::string(env) == "1";
}

inline int env_int(const char* name, int fallback) {
    const char* env = std::getenv(name);
    return env && *env ? std::atoi(env) : fallback;
}

inline double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The p-th percentile (nearest rank, p in 0..100) of `v`; 0 for none.
inline double percentile(std::vector<double> v, double p) {
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    size_t index = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
    return v[index];
}

struct DebugCheckpoint {
    uint64_t seq, pages, pause_us, transfer_us;
    uint64_t disk_writes = 0, disk_bytes = 0;  // the epoch's guest disk writes ([vm] disk)
};

// The primary's per-checkpoint debug records (COLOD_LOG_LEVEL=debug) in a piece of its log.
inline std::vector<DebugCheckpoint> debug_checkpoints(const std::string& log) {
    static const std::regex record(
        R"(checkpoint ([0-9]+): ([0-9]+) pages, pause ([0-9]+) us(?: \([^)]*\))?, transfer and apply ([0-9]+) us)"
        R"((?:, disk ([0-9]+) writes ([0-9]+) bytes)?)");
    std::vector<DebugCheckpoint> out;
    for (auto it = std::sregex_iterator(log.begin(), log.end(), record); it != std::sregex_iterator(); ++it) {
        const auto& m = *it;
        out.push_back({std::stoull(m[1]), std::stoull(m[2]), std::stoull(m[3]), std::stoull(m[4]),
                       m[5].matched ? std::stoull(m[5]) : 0, m[6].matched ? std::stoull(m[6]) : 0});
    }
    return out;
}

// Milliseconds from `start` until a line console at host:port accepts a connection and answers
// `probe` with `answer`, trying every millisecond; negative when it did not within `timeout`.
inline double console_answers_ms(const std::string& host, uint16_t port, Clock::time_point start,
                                 std::chrono::milliseconds timeout, const std::string& probe = "PING",
                                 const std::string& answer = "PONG") {
    auto deadline = start + timeout;
    while (Clock::now() < deadline) {
        auto c = LineClient::connect(host, port, std::chrono::milliseconds(0));
        if (c) {
            auto reply = c->command(probe, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
            if (reply == answer)
                return ms_since(start);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return -1;
}

}  // namespace colod::test::bench
