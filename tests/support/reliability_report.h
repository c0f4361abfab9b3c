// SPDX-License-Identifier: GPL-2.0-or-later
// The reliability suite's table: one row per fault, how many times it was injected, failovers
// performed, acknowledged INCRs checked, violations (must be 0) and the largest daemon RSS seen.
// Every test binary prints its own table when it exits; with COLOD_RELIABILITY_REPORT=FILE the
// rows are also appended to FILE as tab-separated values, which tests/reliability/soak.sh
// merges into one table for the whole run.
#pragma once

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <string>

#include <fmt/format.h>

namespace colod::test {

struct ReliabilityRow {
    uint64_t injected = 0;
    uint64_t failovers = 0;
    uint64_t acked_checked = 0;
    uint64_t violations = 0;
    uint64_t max_rss_kib = 0;
    std::string note;  // the last note given (what "violation" meant, or what happened)
};

class ReliabilityReport {
public:
    static ReliabilityReport& instance() {
        static ReliabilityReport report;
        return report;
    }

    // Adds to the fault's row (rows of the same fault add up; the RSS is the maximum).
    void add(const std::string& fault, uint64_t injected, uint64_t failovers, uint64_t acked_checked,
             uint64_t violations, uint64_t max_rss_kib, const std::string& note = {}) {
        std::lock_guard lock(m_mutex);
        auto& row = m_rows[fault];
        row.injected += injected;
        row.failovers += failovers;
        row.acked_checked += acked_checked;
        row.violations += violations;
        row.max_rss_kib = std::max(row.max_rss_kib, max_rss_kib);
        if (!note.empty())
            row.note = note;
    }

    std::string table() const {
        std::lock_guard lock(m_mutex);
        std::string out =
            "| fault | injected | failovers | acked INCRs checked | violations | max daemon RSS |\n"
            "|---|---:|---:|---:|---:|---:|\n";
        ReliabilityRow total;
        for (const auto& [fault, row] : m_rows) {
            out += fmt::format("| {} | {} | {} | {} | {} | {:.1f} MiB |\n", fault, row.injected, row.failovers,
                               row.acked_checked, row.violations, row.max_rss_kib / 1024.0);
            total.injected += row.injected;
            total.failovers += row.failovers;
            total.acked_checked += row.acked_checked;
            total.violations += row.violations;
            total.max_rss_kib = std::max(total.max_rss_kib, row.max_rss_kib);
        }
        out += fmt::format("| **total** | {} | {} | {} | {} | {:.1f} MiB |\n", total.injected, total.failovers,
                           total.acked_checked, total.violations, total.max_rss_kib / 1024.0);
        return out;
    }

    ~ReliabilityReport() {
        if (m_rows.empty())
            return;
        std::printf("\nreliability table (%s):\n%s", program().c_str(), table().c_str());
        std::fflush(stdout);
        if (const char* path = std::getenv("COLOD_RELIABILITY_REPORT"); path && *path) {
            std::ofstream out(path, std::ios::app);
            for (const auto& [fault, row] : m_rows)
                out << fault << '\t' << row.injected << '\t' << row.failovers << '\t' << row.acked_checked << '\t'
                    << row.violations << '\t' << row.max_rss_kib << '\t' << row.note << '\n';
        }
    }

private:
    static std::string program() { return program_invocation_short_name; }

    mutable std::mutex m_mutex;
    std::map<std::string, ReliabilityRow> m_rows;
};

}  // namespace colod::test
