// SPDX-License-Identifier: GPL-2.0-or-later
// `coloctl status --watch` without a daemon: the view of two samples (rates, a first sample,
// every state, a standby), its terminal frames, the JSON it reads the daemon's status from
// (read back from status_json, as coloctl gets it), and --interval.
#include <catch2/catch.hpp>

#include <limits>
#include <sstream>
#include <vector>

#include "daemons/status_format.h"
#include "daemons/watch.h"
#include "daemons/watch_json.h"
#include "daemons/watch_view.h"
#include "tests/support/status_fixture.h"

using namespace colod;
using namespace std::chrono_literals;
using daemons::JsonValue;
using daemons::Refresh;
using test::lines_of;

namespace {

core::Status protected_primary() {
    core::Status s = test::protected_primary_base();
    s.seq = 1000;
    s.checkpoints = 1000;
    s.pause_us = {80, 75, 140, 300};
    s.dirty_pages.last = 12;
    s.dirty_pages.total = 34'000;
    s.bytes_sent = 100'000'000;
    s.peer = "10.0.0.2:9400";
    s.uptime_ms = 60'000;
    return s;
}

// `base` after `seconds` more of checkpoints at 50/s, 2000 dirty pages/s, 1.5 MiB/s.
core::Status later(core::Status s, uint64_t seconds) {
    s.seq += 50 * seconds;
    s.checkpoints += 50 * seconds;
    s.dirty_pages.total += 2000 * seconds;
    s.bytes_sent += 1536 * 1024 * seconds;
    s.uptime_ms += 1000 * seconds;
    return s;
}

// The line of a view that starts with `label` ("checkpoints:"), or "" without one.
std::string line_of(const std::string& view, const std::string& label) {
    for (const auto& line : lines_of(view))
        if (line.rfind(label, 0) == 0)
            return line;
    return {};
}

// What every view is, whatever it shows: lines of printable ASCII, each ending in '\n'.
void check_plain(const std::string& view) {
    REQUIRE(!view.empty());
    CHECK(view.back() == '\n');
    for (unsigned char c : view)
        CHECK((c == '\n' || (c >= 0x20 && c < 0x7f)));
}

}  // namespace

TEST_CASE("watch: rates are the growth of the counters between two samples over the time between them",
          "[watch]") {
    auto before = protected_primary();
    auto after = later(before, 2);
    after.dirty_pages.last = 40;
    after.held_output_bytes = 3 * 1024;
    auto view = daemons::watch_view(before, after, 2s);
    check_plain(view);
    INFO(view);
    CHECK(lines_of(view).front() == "demo (primary, checkpoint mode)");
    CHECK(line_of(view, "state:") == "state:        protected (the standby holds every committed checkpoint)");
    CHECK(line_of(view, "peer:") == "peer:         10.0.0.2:9400, connected");
    CHECK(line_of(view, "pause:") == "pause:        last 80 us, p99 140 us");
    CHECK(line_of(view, "dirty pages:") == "dirty pages:  last 40, 2000.0/s");
    CHECK(line_of(view, "replication:") == "replication:  1.5 MiB/s sent");
    CHECK(line_of(view, "held output:") == "held output:  3.0 KiB");
    CHECK(line_of(view, "checkpoints:") == "checkpoints:  1100 (seq 1100), 50.0/s");

    // The same growth over another time: the rate follows the elapsed time, not the interval
    // the watch asked for.
    view = daemons::watch_view(before, after, 500ms);
    CHECK(line_of(view, "checkpoints:") == "checkpoints:  1100 (seq 1100), 200.0/s");
    CHECK(line_of(view, "dirty pages:") == "dirty pages:  last 40, 8000.0/s");
    CHECK(line_of(view, "replication:") == "replication:  6.0 MiB/s sent");

    // Nothing happened: rates of 0, not "-".
    view = daemons::watch_view(before, before, 1s);
    CHECK(line_of(view, "checkpoints:") == "checkpoints:  1000 (seq 1000), 0.0/s");
    CHECK(line_of(view, "replication:") == "replication:  0 B/s sent");
}

TEST_CASE("watch: the first sample shows the figures and no rates", "[watch]") {
    auto view = daemons::watch_view(std::nullopt, protected_primary(), 0ns);
    check_plain(view);
    INFO(view);
    CHECK(line_of(view, "dirty pages:") == "dirty pages:  last 12, -/s");
    CHECK(line_of(view, "replication:") == "replication:  - B/s sent");
    CHECK(line_of(view, "checkpoints:") == "checkpoints:  1000 (seq 1000), -/s");
    CHECK(line_of(view, "pause:") == "pause:        last 80 us, p99 140 us");
    CHECK(line_of(view, "held output:") == "held output:  512 B");
}

TEST_CASE("watch: no rate from samples that cannot be compared", "[watch]") {
    auto before = protected_primary();
    SECTION("no time between them") {
        auto view = daemons::watch_view(before, later(before, 1), 0ns);
        CHECK(line_of(view, "checkpoints:") == "checkpoints:  1050 (seq 1050), -/s");
    }
    SECTION("the daemon restarted in between (its uptime went down)") {
        auto after = later(before, 1);
        after.uptime_ms = 500;
        auto view = daemons::watch_view(before, after, 1s);
        CHECK(line_of(view, "checkpoints:") == "checkpoints:  1050 (seq 1050), -/s");
        CHECK(line_of(view, "replication:") == "replication:  - B/s sent");
    }
    SECTION("a counter went down (a takeover starts the active engine's figures from 0)") {
        auto after = later(before, 1);
        after.checkpoints = 3;
        after.bytes_sent = 0;
        auto view = daemons::watch_view(before, after, 1s);
        CHECK(line_of(view, "checkpoints:") == "checkpoints:  3 (seq 1050), -/s");
        CHECK(line_of(view, "replication:") == "replication:  - B/s sent");
        // The counters that did grow still have their rate.
        CHECK(line_of(view, "dirty pages:") == "dirty pages:  last 12, 2000.0/s");
    }
}

TEST_CASE("watch: a daemon in every state shows it, with what it means", "[watch]") {
    const std::vector<std::pair<std::string, std::string>> states{
        {"syncing", "the live copy to the standby is under way"},
        {"protected", "the standby holds every committed checkpoint"},
        {"unprotected", "the guest runs without a replica"},
        {"standby", "holds the replica, ready to take over"},
        {"active", "took over: the guest runs here, without a replica"},
        {"stopped", "the guest has stopped"},
    };
    for (const auto& [state, hint] : states) {
        auto before = protected_primary();
        before.state = state;
        auto after = later(before, 1);
        auto view = daemons::watch_view(before, after, 1s);
        INFO(view);
        check_plain(view);
        CHECK(line_of(view, "state:") == "state:        " + state + " (" + hint + ")");
        // Every figure has its line in every state.
        for (const char* label : {"peer:", "pause:", "dirty pages:", "replication:", "held output:", "checkpoints:"})
            CHECK(!line_of(view, label).empty());
        CHECK(lines_of(view).size() == 8);
    }
    // A state this coloctl does not know (a newer daemon) is shown as it is.
    auto s = protected_primary();
    s.state = "handing-over";
    CHECK(line_of(daemons::watch_view(std::nullopt, s, 0ns), "state:") == "state:        handing-over");
}

TEST_CASE("watch: a standby without pauses says who pauses and who sends", "[watch]") {
    core::Status s;
    s.vm = "demo";
    s.role = "secondary";
    s.mode = "checkpoint";
    s.state = "standby";
    s.seq = 400;
    s.checkpoints = 400;
    s.dirty_pages.last = 3;
    s.dirty_pages.total = 9000;
    s.peer = "10.0.0.1:40000";
    s.peer_state = "connected";
    s.uptime_ms = 10'000;
    auto after = s;
    after.seq += 30;
    after.checkpoints += 30;
    after.dirty_pages.total += 300;
    after.uptime_ms += 3000;
    auto view = daemons::watch_view(s, after, 3s);
    check_plain(view);
    INFO(view);
    CHECK(lines_of(view).front() == "demo (secondary, checkpoint mode)");
    CHECK(line_of(view, "pause:") == "pause:        none (the active side pauses the guest)");
    CHECK(line_of(view, "replication:") == "replication:  - (a standby sends no guest state)");
    CHECK(line_of(view, "checkpoints:") == "checkpoints:  430 applied (seq 430), 10.0/s");
    CHECK(line_of(view, "dirty pages:") == "dirty pages:  last 3, 100.0/s");
    CHECK(line_of(view, "held output:") == "held output:  0 B");

    // The active side before its first checkpoint, and a standalone primary (no peer).
    auto fresh = protected_primary();
    fresh.state = "syncing";
    fresh.pause_us = {};
    CHECK(line_of(daemons::watch_view(std::nullopt, fresh, 0ns), "pause:") == "pause:        none yet");
    fresh.peer_state = "none";
    CHECK(line_of(daemons::watch_view(std::nullopt, fresh, 0ns), "peer:") == "peer:         none");
}

TEST_CASE("watch: the figures' formats", "[watch]") {
    CHECK(daemons::pause_text(0) == "0 us");
    CHECK(daemons::pause_text(9999) == "9999 us");
    CHECK(daemons::pause_text(12'345) == "12.3 ms");
    CHECK(daemons::pause_text(2'500'000) == "2.50 s");
    CHECK(daemons::byte_rate_text(0) == "0 B/s");
    CHECK(daemons::byte_rate_text(1023) == "1023 B/s");
    CHECK(daemons::byte_rate_text(1024) == "1.0 KiB/s");
    CHECK(daemons::byte_rate_text(1.3 * 1024 * 1024 * 1024) == "1.3 GiB/s");
    CHECK(daemons::byte_rate_text(5.0 * 1024 * 1024 * 1024 * 1024 * 1024) == "5120.0 TiB/s");
    CHECK(daemons::size_text(0) == "0 B");
    CHECK(daemons::size_text(1536) == "1.5 KiB");
    CHECK(daemons::size_text(64 * 1024 * 1024) == "64.0 MiB");
}

TEST_CASE("watch: a terminal refresh overwrites the last one in place", "[watch]") {
    std::string block = "demo (primary, checkpoint mode)\nstate:        protected\n";
    auto first = daemons::watch_terminal_frame(block, 0, Refresh::First);
    CHECK(first == "\x1b[?25l\x1b[2J\x1b[H"
                   "demo (primary, checkpoint mode)\x1b[K\nstate:        protected\x1b[K\n\x1b[J");
    auto next = daemons::watch_terminal_frame(block, 0, Refresh::Next);
    CHECK(next == "\x1b[H"
                  "demo (primary, checkpoint mode)\x1b[K\nstate:        protected\x1b[K\n\x1b[J");
    // Cut at the terminal's width, so that no line wraps onto the next.
    CHECK(daemons::watch_terminal_frame(block, 10, Refresh::Next) ==
          "\x1b[Hdemo (prim\x1b[K\nstate:    \x1b[K\n\x1b[J");
    // The end shows the cursor that the first refresh hid.
    CHECK(std::string(daemons::k_watch_terminal_end).find("\x1b[?25h") != std::string::npos);
}

TEST_CASE("watch: the daemon's status --json is read back as it was written", "[watch][json]") {
    auto s = protected_primary();
    s.vm = "web \"1\"\\\n\t";
    s.mode = "colo";
    s.bytes_sent = std::numeric_limits<uint64_t>::max();  // exact, not through a double
    s.console_clients = 3;
    s.checkpoints_mismatch = 7;
    s.checkpoints_interval = 993;
    s.compare_us_p50 = 11;
    s.compare_us_p99 = 99;
    auto read = daemons::status_from_json(daemons::status_json(s));
    REQUIRE(read);
    CHECK(read->vm == s.vm);
    CHECK(read->role == s.role);
    CHECK(read->mode == s.mode);
    CHECK(read->state == s.state);
    CHECK(read->backend == s.backend);
    CHECK(read->guest == s.guest);
    CHECK(read->seq == s.seq);
    CHECK(read->checkpoints == s.checkpoints);
    CHECK(read->pause_us.last == 80);
    CHECK(read->pause_us.p50 == 75);
    CHECK(read->pause_us.p99 == 140);
    CHECK(read->pause_us.max == 300);
    CHECK(read->dirty_pages.last == s.dirty_pages.last);
    CHECK(read->dirty_pages.total == s.dirty_pages.total);
    CHECK(read->bytes_sent == s.bytes_sent);
    CHECK(read->held_output_bytes == s.held_output_bytes);
    CHECK(read->peer == s.peer);
    CHECK(read->peer_state == s.peer_state);
    CHECK(read->uptime_ms == s.uptime_ms);
    CHECK(read->console_clients == 3);
    CHECK(read->checkpoints_mismatch == 7);
    CHECK(read->checkpoints_interval == 993);
    CHECK(read->compare_us_p50 == 11);
    CHECK(read->compare_us_p99 == 99);
    // And the view of what was read is the view of what was written.
    CHECK(daemons::watch_view(std::nullopt, *read, 0ns) == daemons::watch_view(std::nullopt, s, 0ns));
}

TEST_CASE("status --json: the guest's NIC is an object with its counters, null without one", "[watch][json][network]") {
    auto s = protected_primary();
    auto doc = daemons::parse_json(daemons::status_json(s));
    REQUIRE(doc);
    REQUIRE(doc->find("network"));
    CHECK(doc->find("network")->is(JsonValue::Kind::Null));
    CHECK(daemons::status_text(s).find("network:") == std::string::npos);

    s.network.present = true;
    s.network.tap = "tap \"a\"";
    s.network.tx_frames = 1;
    s.network.tx_bytes = 2;
    s.network.rx_frames = 3;
    s.network.rx_bytes = 4;
    s.network.rx_dropped = 5;
    s.network.rx_backlog = 6;
    s.network.tap_dropped = 7;
    s.network.bad_chains = 8;
    s.network.input_dropped = 9;
    s.network.announcements = std::numeric_limits<uint64_t>::max();
    s.network.compare_us_p50 = 640;
    s.network.compare_us_p99 = 9100;
    doc = daemons::parse_json(daemons::status_json(s));
    REQUIRE(doc);
    const JsonValue* net = doc->find("network");
    REQUIRE(net);
    REQUIRE(net->is(JsonValue::Kind::Object));
    CHECK(net->find("tap")->text() == s.network.tap);
    uint64_t expected = 1;
    for (const char* key : {"tx_frames", "tx_bytes", "rx_frames", "rx_bytes", "rx_dropped", "rx_backlog", "tap_dropped",
                            "bad_chains", "input_dropped"}) {
        INFO(key);
        REQUIRE(net->find(key));
        CHECK(net->find(key)->as_u64() == expected++);
    }
    CHECK(net->find("announcements")->as_u64() == std::numeric_limits<uint64_t>::max());
    REQUIRE(net->find("compare_us"));
    CHECK(net->find("compare_us")->find("p50")->as_u64() == 640);
    CHECK(net->find("compare_us")->find("p99")->as_u64() == 9100);
    // The reader of coloctl status --watch takes it (it skips what it does not show).
    CHECK(daemons::status_from_json(daemons::status_json(s)));
    CHECK_THAT(daemons::status_text(s), Catch::Contains("network:         tap tap \"a\": tx 1 frames (2 bytes), rx 3 "
                                                        "frames (4 bytes); dropped: rx 5, tap 7, replica input 9"));
    CHECK_THAT(daemons::status_text(s), Catch::Contains("; compared in p50 640 us, p99 9100 us"));
}

TEST_CASE("status --json: the guest's disk is an object with its figures, null without one", "[watch][json][disk]") {
    auto s = protected_primary();
    auto doc = daemons::parse_json(daemons::status_json(s));
    REQUIRE(doc);
    REQUIRE(doc->find("disk"));
    CHECK(doc->find("disk")->is(JsonValue::Kind::Null));
    s.disk = {true, 1ull << 30, 16384, 100, 7, 458752, 4096};
    doc = daemons::parse_json(daemons::status_json(s));
    REQUIRE(doc);
    const JsonValue* disk = doc->find("disk");
    REQUIRE(disk);
    REQUIRE(disk->is(JsonValue::Kind::Object));
    CHECK(disk->find("bytes")->as_u64() == (1ull << 30));
    CHECK(disk->find("blocks")->as_u64() == 16384u);
    CHECK(disk->find("copied_blocks")->as_u64() == 100u);
    CHECK(disk->find("sent_blocks")->as_u64() == 7u);
    CHECK(disk->find("sent_bytes")->as_u64() == 458752u);
    CHECK(disk->find("checkpoint_bytes")->as_u64() == 4096u);
    CHECK(daemons::status_from_json(daemons::status_json(s)));
    CHECK_THAT(daemons::status_text(s), Catch::Contains("disk:            1073741824 bytes; copy: 100 of 16384 blocks "
                                                        "compared, 7 sent"));
}

TEST_CASE("watch: a status without the promised keys, or with wrong types, is refused by name", "[watch][json]") {
    const std::string full = daemons::status_json(protected_primary());
    auto without = [&](const std::string& key_and_value) {
        std::string text = full;
        auto at = text.find(key_and_value);
        REQUIRE(at != std::string::npos);
        text.erase(at, key_and_value.size());
        return text;
    };
    auto refused = [](const std::string& text, const std::string& reason) {
        auto read = daemons::status_from_json(text);
        REQUIRE(!read);
        CHECK(read.error().code() == base::Errc::Protocol);
        CHECK_THAT(read.error().message(), Catch::Contains(reason));
    };
    refused(without("\"state\": \"protected\", "), "\"state\" is missing");
    refused(without("\"p99\": 140, "), "\"p99\" is missing");
    std::string text = full;
    text.replace(text.find("\"seq\": 1000"), 11, "\"seq\": \"1000\"");
    refused(text, "\"seq\" is not a whole number");
    text = full;
    text.replace(text.find("\"seq\": 1000"), 11, "\"seq\": -1");
    refused(text, "\"seq\" is not a whole number");
    text = full;
    text.replace(text.find("\"vm\": \"demo\""), 12, "\"vm\": 1");
    refused(text, "\"vm\" is not a string");
    refused("[1, 2]", "not a JSON object");
    refused("ERR no", "JSON: unexpected character at byte 0");
    refused(full.substr(0, full.size() / 2), "JSON:");

    // Keys the daemon adds later are skipped; those status_json added to DESIGN.md's may be
    // missing (an older daemon).
    text = full;
    text.insert(1, "\"future\": {\"a\": [1, 2.5e3, null, true]}, ");
    CHECK(daemons::status_from_json(text));
    CHECK(daemons::status_from_json(without("\"uptime_ms\": 60000, ")));
}

TEST_CASE("json: the reader takes JSON as RFC 8259 writes it and refuses the rest", "[json]") {
    auto doc = daemons::parse_json(
        R"( {"a": [1, -2.5, 3e2, 0, true, false, null, "x"], "b": {"c": "\u00e9\ud83d\ude00\n\"\\\/"}, "d": []} )");
    REQUIRE(doc);
    REQUIRE(doc->is(JsonValue::Kind::Object));
    const auto& a = doc->find("a")->items();
    REQUIRE(a.size() == 8);
    CHECK(a[0].as_u64() == 1u);
    CHECK(!a[1].as_u64());
    CHECK(a[1].as_double() == -2.5);
    CHECK(a[2].as_double() == 300.0);
    CHECK(!a[2].as_u64());
    CHECK(a[3].as_u64() == 0u);
    CHECK(a[4].boolean_value());
    CHECK(a[5].is(JsonValue::Kind::Bool));
    CHECK(a[6].is(JsonValue::Kind::Null));
    CHECK(a[7].text() == "x");
    CHECK(doc->find("b")->find("c")->text() == "\xc3\xa9\xf0\x9f\x98\x80\n\"\\/");
    CHECK(doc->find("d")->items().empty());
    CHECK(doc->find("e") == nullptr);
    CHECK(daemons::parse_json("18446744073709551615")->as_u64() == std::numeric_limits<uint64_t>::max());
    CHECK(!daemons::parse_json("18446744073709551616")->as_u64());

    for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "{\"a\": 1,}", "01", "1.", "-", "1e", "\"abc", "\"\\x\"",
                            "\"\\u12\"", "\"\\ud800\"", "\"\\udc00\"", "\"a\nb\"", "tru", "{} {}", "{\"a\": 1, \"a\": 2}",
                            "[1] x", "nul"}) {
        INFO(bad);
        CHECK(!daemons::parse_json(bad));
    }
    // Deep nesting is refused, not followed down the stack.
    CHECK(daemons::parse_json(std::string(64, '[') + std::string(64, ']')));
    auto deep = daemons::parse_json(std::string(100'000, '['));
    REQUIRE(!deep);
    CHECK_THAT(deep.error().message(), Catch::Contains("nested too deeply"));
}

TEST_CASE("watch: --interval takes seconds or a duration, and refuses 0, negatives and garbage", "[watch]") {
    using daemons::parse_watch_interval;
    CHECK(parse_watch_interval("1").value() == 1s);
    CHECK(parse_watch_interval("2").value() == 2s);
    CHECK(parse_watch_interval("0.5").value() == 500ms);
    CHECK(parse_watch_interval(".25").value() == 250ms);
    CHECK(parse_watch_interval("500ms").value() == 500ms);
    CHECK(parse_watch_interval("2s").value() == 2s);
    CHECK(parse_watch_interval("1m").value() == 60s);
    CHECK(parse_watch_interval("10ms").value() == daemons::k_watch_min_interval);
    CHECK(daemons::k_watch_default_interval == 1s);
    auto refused = [](const char* text, const char* reason) {
        INFO(text);
        auto parsed = parse_watch_interval(text);
        REQUIRE(!parsed);
        CHECK(parsed.error().code() == base::Errc::Invalid);
        CHECK_THAT(parsed.error().message(), Catch::Contains(reason));
    };
    refused("0", "must be more than 0");
    refused("0.0", "must be more than 0");
    refused("0s", "must be more than 0");
    refused("-1", "must be more than 0");
    refused("-0.5s", "must be more than 0");
    refused("", "not a number of seconds");
    refused("abc", "not a number of seconds");
    refused("1x", "not a number of seconds");
    refused("1.2.3", "not a number of seconds");
    refused("0.001", "must be at least 10ms");
    refused("5ms", "must be at least 10ms");
    refused("2h", "not a number of seconds");  // the config's units: us, ms, s, m
    refused("61m", "must be at most");
    refused("1e9", "not a number of seconds");
    refused("99999999999999999999", "must be at most");
}
