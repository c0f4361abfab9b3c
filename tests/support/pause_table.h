// SPDX-License-Identifier: GPL-2.0-or-later
// The "checkpoint pause against dirty pages" table the pair benchmarks print, for any guest that
// speaks the kvstore protocol (the embedded guest, the Linux guest's kvstored): CHURN n on the
// primary's console, then a window of `coloctl status --json` figures and the primary's
// per-checkpoint debug records (the primary must run with COLOD_LOG_LEVEL=debug).
#pragma once

#include <fmt/format.h>

#include "tests/support/bench.h"
#include "tests/support/pair.h"

namespace colod::test::bench {

inline uint64_t info_pages(LineClient& c) {
    auto reply = c.command("INFO", std::chrono::seconds(30));
    REQUIRE(reply);
    auto at = reply->find("pages=");
    REQUIRE(at != std::string::npos);
    return std::stoull(reply->substr(at + 6));
}

inline std::string status_json(Pair& pair) {
    auto json = pair.control(Pair::Side::Primary, "status --json");
    REQUIRE(json);
    return *json;
}

inline uint64_t json_nested(const std::string& json, const std::string& object, const std::string& key) {
    auto at = json.find("\"" + object + "\": {");
    REQUIRE(at != std::string::npos);
    auto value = json_number(json.substr(at), key);
    REQUIRE(value);
    return *value;
}

struct PauseRow {
    uint64_t n;
    double guest_pages_per_s, checkpoints_per_s, pages_avg, pages_p50, pages_p99;
    uint64_t status_p50, status_p99, status_max;
    double pause_p50, pause_p99, transfer_p50, transfer_p99, mb_per_s;
};

// One row: CHURN n on `console` (the primary's, the pair protected), `warm_up`, then `window`.
inline PauseRow measure_pause_row(Pair& pair, LineClient& console, uint64_t n, std::chrono::milliseconds warm_up,
                                  std::chrono::milliseconds window) {
    REQUIRE(console.command(fmt::format("CHURN {}", n), std::chrono::seconds(30)) == "OK");
    std::this_thread::sleep_for(warm_up);  // the measurement window starts after the first full rounds
    size_t log_from = pair.read_log("primary").size();
    // The daemon's side of things, should the console fail the measurement.
    INFO("primary's log (end):\n" << [&] {
        std::string log = pair.read_log("primary");
        return log.substr(log.size() > 4000 ? log.size() - 4000 : 0);
    }());
    uint64_t pages0 = info_pages(console);
    std::string s0 = status_json(pair);
    auto t0 = Clock::now();
    std::this_thread::sleep_for(window);  // the measurement window itself
    uint64_t pages1 = info_pages(console);
    std::string s1 = status_json(pair);
    double seconds = ms_since(t0) / 1000.0;
    auto records = debug_checkpoints(pair.read_log("primary").substr(log_from));
    REQUIRE(!records.empty());
    std::vector<double> pause, transfer, pages;
    for (const auto& r : records) {
        pause.push_back(static_cast<double>(r.pause_us));
        transfer.push_back(static_cast<double>(r.transfer_us) / 1000.0);
        pages.push_back(static_cast<double>(r.pages));
    }
    uint64_t checkpoints = *json_number(s1, "checkpoints") - *json_number(s0, "checkpoints");
    uint64_t dirty = json_nested(s1, "dirty_pages", "total") - json_nested(s0, "dirty_pages", "total");
    uint64_t bytes = *json_number(s1, "bytes_sent") - *json_number(s0, "bytes_sent");
    return PauseRow{n, static_cast<double>(pages1 - pages0) / seconds, static_cast<double>(checkpoints) / seconds,
                    checkpoints ? static_cast<double>(dirty) / static_cast<double>(checkpoints) : 0,
                    percentile(pages, 50), percentile(pages, 99), json_nested(s1, "pause_us", "p50"),
                    json_nested(s1, "pause_us", "p99"), json_nested(s1, "pause_us", "max"), percentile(pause, 50),
                    percentile(pause, 99), percentile(transfer, 50), percentile(transfer, 99),
                    static_cast<double>(bytes) / seconds / 1e6};
}

inline void print_pause_table(const std::vector<PauseRow>& rows, const std::string& checkpoint_interval,
                              std::chrono::milliseconds warm_up, std::chrono::milliseconds window) {
    fmt::print("\nCheckpoint pause against dirty pages (checkpoint-interval {}, {:.0f} s window after {:.0f} s of "
               "warm-up)\n",
               checkpoint_interval, std::chrono::duration<double>(window).count(),
               std::chrono::duration<double>(warm_up).count());
    fmt::print("| CHURN n | guest pages/s | ckpt/s | dirty pages/ckpt avg | p50  | p99  | status pause us p50 | p99  "
               "| max   | window pause us p50 | p99  | transfer+apply ms p50 | p99   | MB/s sent |\n");
    fmt::print("|---------|---------------|--------|----------------------|------|------|---------------------|------"
               "|-------|---------------------|------|-----------------------|-------|-----------|\n");
    for (const auto& r : rows)
        fmt::print("| {:>7} | {:>13.0f} | {:>6.1f} | {:>20.1f} | {:>4.0f} | {:>4.0f} | {:>19} | {:>4} | {:>5} | {:>19.0f} | "
                   "{:>4.0f} | {:>21.2f} | {:>5.2f} | {:>9.1f} |\n",
                   r.n, r.guest_pages_per_s, r.checkpoints_per_s, r.pages_avg, r.pages_p50, r.pages_p99, r.status_p50,
                   r.status_p99, r.status_max, r.pause_p50, r.pause_p99, r.transfer_p50, r.transfer_p99, r.mb_per_s);
    fmt::print("(status: `status --json` pause_us over the pair's last 1024 checkpoints, sync and warm-up included; "
               "window: the primary's debug records of the window only; transfer+apply: encode, send, "
               "VMSTATE_RECEIVED and VMSTATE_LOADED)\n\n");
}

}  // namespace colod::test::bench
