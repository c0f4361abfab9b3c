// SPDX-License-Identifier: GPL-2.0-or-later
// The Prometheus text exposition of a status: golden lines, the format's rules (HELP and TYPE
// before each family, label escaping, cumulative histogram buckets) checked on every line.
#include <catch2/catch.hpp>

#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <vector>

#include "daemons/metrics_format.h"
#include "tests/support/http_client.h"
#include "tests/support/status_fixture.h"

using namespace colod;
using daemons::escape_label_value;
using daemons::metrics_text;
using daemons::seconds_text;
using test::lines_of;
using test::metric_value;

namespace {

core::Status protected_primary() {
    core::Status s = test::protected_primary_base();
    s.seq = 1234;
    s.checkpoints = 10;
    s.checkpoints_forced = 3;
    s.checkpoints_mismatch = 2;
    s.dirty_pages.total = 34567;
    s.bytes_sent = 123456789;
    s.sync_progress = 1;
    s.console_clients = 2;
    s.uptime_ms = 61'500;
    s.pause_histogram.counts[0] = 1;   // <= 50 us
    s.pause_histogram.counts[2] = 2;   // <= 250 us
    s.pause_histogram.counts[13] = 3;  // <= 1 s
    s.pause_histogram.count = 7;       // and one above 1 s
    s.pause_histogram.sum_us = 3'000'250;
    return s;
}

bool has_line(const std::string& text, const std::string& line) {
    for (const auto& l : lines_of(text))
        if (l == line)
            return true;
    return false;
}

// The checks every exposition must pass, whatever the status.
void check_format(const std::string& text) {
    REQUIRE(!text.empty());
    CHECK(text.back() == '\n');
    static const std::regex help(R"(^# HELP (colod_[a-z_]+) \S.*$)");
    static const std::regex type(R"(^# TYPE (colod_[a-z_]+) (counter|gauge|histogram)$)");
    // name{vm="...",label="..."} value, label values escaped.
    static const std::regex sample(
        R"re(^(colod_[a-z_]+)\{vm="(?:[^"\\\n]|\\["\\n])*"((?:,[a-z_]+="(?:[^"\\\n]|\\["\\n])*")*)\} (\S+)$)re");
    std::set<std::string> families;
    std::map<std::string, std::string> types;
    std::string current;  // the family whose samples may follow
    std::string helped;   // the last HELP, which the TYPE line must follow
    for (const auto& line : lines_of(text)) {
        INFO(line);
        std::smatch match;
        if (std::regex_match(line, match, help)) {
            CHECK(families.insert(match[1]).second);  // one HELP per family
            helped = match[1];
            current.clear();
        } else if (std::regex_match(line, match, type)) {
            CHECK(match[1] == helped);
            types[match[1]] = match[2];
            current = match[1];
            if (match[2] == "counter")
                CHECK(current.ends_with("_total"));
        } else if (std::regex_match(line, match, sample)) {
            std::string name = match[1];
            bool belongs = name == current ||
                           (types[current] == "histogram" &&
                            (name == current + "_bucket" || name == current + "_sum" || name == current + "_count"));
            CHECK(belongs);
            char* end = nullptr;
            std::string value = match[3];
            if (value != "+Inf" && value != "NaN") {
                std::strtod(value.c_str(), &end);
                CHECK(*end == '\0');
            }
        } else {
            FAIL_CHECK("not a HELP, TYPE or sample line");
        }
    }
}

}  // namespace

TEST_CASE("metrics: the golden lines of a protected primary", "[metrics]") {
    const std::string text = metrics_text(protected_primary());
    check_format(text);
    for (const char* line : {
             R"(colod_info{vm="demo",mode="checkpoint",backend="kvm"} 1)",
             R"(colod_role{vm="demo",role="primary"} 1)",
             R"(colod_role{vm="demo",role="secondary"} 0)",
             R"(colod_state{vm="demo",state="syncing"} 0)",
             R"(colod_state{vm="demo",state="protected"} 1)",
             R"(colod_state{vm="demo",state="unprotected"} 0)",
             R"(colod_state{vm="demo",state="standby"} 0)",
             R"(colod_state{vm="demo",state="active"} 0)",
             R"(colod_state{vm="demo",state="stopped"} 0)",
             R"(colod_guest_running{vm="demo"} 1)",
             R"(colod_peer_connected{vm="demo"} 1)",
             R"(colod_sync_progress_ratio{vm="demo"} 1)",
             R"(colod_checkpoint_seq{vm="demo"} 1234)",
             "# HELP colod_checkpoints_total Checkpoints this daemon took and the standby committed, by cause: "
             "interval (checkpoint-interval elapsed), forced (coloctl checkpoint, held output over "
             "max-held-output, a handover, a lagging COLO secondary, the end of a live sync), mismatch (COLO "
             "outputs differed).",
             "# TYPE colod_checkpoints_total counter",
             R"(colod_checkpoints_total{vm="demo",cause="interval"} 5)",
             R"(colod_checkpoints_total{vm="demo",cause="forced"} 3)",
             R"(colod_checkpoints_total{vm="demo",cause="mismatch"} 2)",
             R"(colod_checkpoints_applied_total{vm="demo"} 0)",
             "# TYPE colod_checkpoint_pause_seconds histogram",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="0.00005"} 1)",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="0.0001"} 1)",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="0.00025"} 3)",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="0.5"} 3)",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="1"} 6)",
             R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="+Inf"} 7)",
             R"(colod_checkpoint_pause_seconds_sum{vm="demo"} 3.00025)",
             R"(colod_checkpoint_pause_seconds_count{vm="demo"} 7)",
             "# TYPE colod_dirty_pages_total counter",
             R"(colod_dirty_pages_total{vm="demo"} 34567)",
             R"(colod_replication_sent_bytes_total{vm="demo"} 123456789)",
             R"(colod_held_output_bytes{vm="demo"} 512)",
             R"(colod_failovers_total{vm="demo"} 0)",
             R"(colod_last_failover_duration_seconds{vm="demo"} 0)",
             R"(colod_console_clients{vm="demo"} 2)",
             R"(colod_uptime_seconds{vm="demo"} 61.5)",
         }) {
        INFO(line);
        CHECK(has_line(text, line));
    }
    // HELP, then TYPE, then the samples.
    CHECK(text.find("# HELP colod_state ") < text.find("# TYPE colod_state gauge"));
    CHECK(text.find("# TYPE colod_state gauge") < text.find("colod_state{"));
}

TEST_CASE("metrics: the guest's NIC shows only when it has one", "[metrics][network]") {
    core::Status s = protected_primary();
    CHECK(metrics_text(s).find("colod_net_") == std::string::npos);
    s.network.present = true;
    s.network.tap = "tap-a";
    s.network.tx_frames = 11;
    s.network.tx_bytes = 1100;
    s.network.rx_frames = 22;
    s.network.rx_bytes = 2200;
    s.network.rx_dropped = 3;
    s.network.tap_dropped = 4;
    s.network.input_dropped = 5;
    s.network.rx_backlog = 6;
    s.network.bad_chains = 7;
    s.network.announcements = 8;
    const std::string text = metrics_text(s);
    check_format(text);
    for (const char* line : {
             "# TYPE colod_net_frames_total counter",
             R"(colod_net_frames_total{vm="demo",direction="tx"} 11)",
             R"(colod_net_frames_total{vm="demo",direction="rx"} 22)",
             R"(colod_net_bytes_total{vm="demo",direction="tx"} 1100)",
             R"(colod_net_bytes_total{vm="demo",direction="rx"} 2200)",
             R"(colod_net_dropped_frames_total{vm="demo",where="rx"} 3)",
             R"(colod_net_dropped_frames_total{vm="demo",where="tap"} 4)",
             R"(colod_net_dropped_frames_total{vm="demo",where="replica_input"} 5)",
             "# TYPE colod_net_rx_backlog_frames gauge",
             R"(colod_net_rx_backlog_frames{vm="demo"} 6)",
             R"(colod_net_bad_chains_total{vm="demo"} 7)",
             R"(colod_net_announcements_total{vm="demo"} 8)",
         }) {
        INFO(line);
        CHECK(has_line(text, line));
    }
}

TEST_CASE("metrics: the guest's disk shows only when it has one", "[metrics][disk]") {
    core::Status s = protected_primary();
    CHECK(metrics_text(s).find("colod_disk_") == std::string::npos);
    s.disk.present = true;
    s.disk.bytes = 1 << 30;
    s.disk.blocks = 16384;
    s.disk.copied_blocks = 4096;
    s.disk.sent_bytes = 123;
    s.disk.checkpoint_bytes = 45;
    const std::string text = metrics_text(s);
    check_format(text);
    for (const char* line : {
             R"(colod_disk_size_bytes{vm="demo"} 1073741824)",
             R"(colod_disk_copy_progress_ratio{vm="demo"} 0.25)",
             "# TYPE colod_disk_sent_bytes_total counter",
             R"(colod_disk_sent_bytes_total{vm="demo"} 123)",
             R"(colod_disk_checkpoint_bytes_total{vm="demo"} 45)",
         }) {
        INFO(line);
        CHECK(has_line(text, line));
    }
}

TEST_CASE("metrics: histogram buckets are cumulative, ascending, and end at +Inf = _count", "[metrics]") {
    core::Status s = protected_primary();
    for (size_t i = 0; i < s.pause_histogram.counts.size(); ++i)
        s.pause_histogram.counts[i] = i % 3;
    s.pause_histogram.count = 100;
    const std::string text = metrics_text(s);
    check_format(text);
    static const std::regex bucket(R"re(^colod_checkpoint_pause_seconds_bucket\{vm="demo",le="([^"]+)"\} (\d+)$)re");
    double last_bound = 0;
    uint64_t last_count = 0, expected = 0;
    size_t buckets = 0;
    for (const auto& line : lines_of(text)) {
        std::smatch match;
        if (!std::regex_match(line, match, bucket))
            continue;
        uint64_t count = std::stoull(match[2]);
        CHECK(count >= last_count);
        if (match[1] == "+Inf") {
            CHECK(count == 100);
        } else {
            double bound = std::stod(match[1]);
            CHECK(bound > last_bound);
            CHECK(bound * 1e6 == Approx(static_cast<double>(core::k_pause_buckets_us[buckets])));
            expected += s.pause_histogram.counts[buckets];
            CHECK(count == expected);
            last_bound = bound;
            ++buckets;
        }
        last_count = count;
    }
    CHECK(buckets == core::k_pause_buckets_us.size());
    CHECK(metric_value(text, R"(colod_checkpoint_pause_seconds_count{vm="demo"})") == 100);
}

TEST_CASE("metrics: a standby applies checkpoints, takes none; a takeover shows", "[metrics]") {
    core::Status s;
    s.vm = "demo";
    s.role = "secondary";
    s.state = "standby";
    s.checkpoints = 42;
    s.checkpoints_applied = 42;
    s.peer_state = "connected";
    s.sync_progress = 0.25;
    std::string text = metrics_text(s);
    check_format(text);
    CHECK(has_line(text, R"(colod_role{vm="demo",role="secondary"} 1)"));
    CHECK(has_line(text, R"(colod_state{vm="demo",state="standby"} 1)"));
    CHECK(has_line(text, R"(colod_checkpoints_total{vm="demo",cause="interval"} 0)"));
    CHECK(has_line(text, R"(colod_checkpoints_applied_total{vm="demo"} 42)"));
    CHECK(has_line(text, R"(colod_sync_progress_ratio{vm="demo"} 0.25)"));
    CHECK(has_line(text, R"(colod_guest_running{vm="demo"} 0)"));
    CHECK(has_line(text, R"(colod_checkpoint_pause_seconds_bucket{vm="demo",le="+Inf"} 0)"));
    CHECK(has_line(text, R"(colod_checkpoint_pause_seconds_sum{vm="demo"} 0)"));

    s.state = "active";
    s.failovers = 1;
    s.last_failover_us = 312'000;
    s.peer_state = "lost";
    text = metrics_text(s);
    CHECK(has_line(text, R"(colod_state{vm="demo",state="active"} 1)"));
    CHECK(has_line(text, R"(colod_state{vm="demo",state="standby"} 0)"));
    CHECK(has_line(text, R"(colod_failovers_total{vm="demo"} 1)"));
    CHECK(has_line(text, R"(colod_last_failover_duration_seconds{vm="demo"} 0.312)"));
    CHECK(has_line(text, R"(colod_peer_connected{vm="demo"} 0)"));
}

TEST_CASE("metrics: label values are escaped, a state outside the list still shows", "[metrics]") {
    CHECK(escape_label_value("plain-name_1.x") == "plain-name_1.x");
    CHECK(escape_label_value("a\"b") == "a\\\"b");
    CHECK(escape_label_value("a\\b") == "a\\\\b");
    CHECK(escape_label_value("a\nb") == "a\\nb");
    CHECK(escape_label_value("\\\"\n") == "\\\\\\\"\\n");
    core::Status s = protected_primary();
    s.vm = "we\"ird\\vm\nname";
    s.state = "new-state";
    const std::string text = metrics_text(s);
    check_format(text);
    CHECK(has_line(text, R"(colod_state{vm="we\"ird\\vm\nname",state="new-state"} 1)"));
    CHECK(has_line(text, R"(colod_state{vm="we\"ird\\vm\nname",state="protected"} 0)"));
    CHECK(text.find("we\"ird") == std::string::npos);
}

TEST_CASE("metrics: seconds are exact decimals", "[metrics]") {
    CHECK(seconds_text(0) == "0");
    CHECK(seconds_text(1) == "0.000001");
    CHECK(seconds_text(50) == "0.00005");
    CHECK(seconds_text(250'000) == "0.25");
    CHECK(seconds_text(1'000'000) == "1");
    CHECK(seconds_text(2'500'000) == "2.5");
    CHECK(seconds_text(61'000'123) == "61.000123");
}
