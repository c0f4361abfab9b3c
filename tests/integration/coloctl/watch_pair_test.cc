// SPDX-License-Identifier: GPL-2.0-or-later
// `coloctl status --watch` against a running pair, its standard output a pipe (so not a
// terminal): blocks of plain lines, one per refresh, whose figures follow the daemon; SIGINT
// ends it with 0; a daemon that goes away ends it with 3. No figure is compared with a clock:
// the test waits for the blocks that show what it expects.
#include <catch2/catch.hpp>

#include <signal.h>

#include <optional>
#include <string>
#include <vector>

#include "tests/support/pair.h"

using namespace colod;
using namespace colod::test;
using Side = Pair::Side;

namespace {

// One refresh: the lines up to the empty line that ends a block, nullopt at EOF or timeout.
std::optional<std::vector<std::string>> next_block(Process& watch) {
    std::vector<std::string> block;
    while (auto line = watch.line(std::chrono::seconds(30))) {
        if (line->empty())
            return block;
        block.push_back(*line);
    }
    return std::nullopt;
}

std::string line_of(const std::vector<std::string>& block, const std::string& label) {
    for (const auto& line : block)
        if (line.rfind(label, 0) == 0)
            return line;
    return {};
}

// "checkpoints:  1234 (seq 1234), 48.9/s": the count and the rate (nullopt for "-/s").
struct CheckpointLine {
    uint64_t count = 0;
    std::optional<double> per_second;
};
CheckpointLine checkpoints_of(const std::vector<std::string>& block) {
    std::string line = line_of(block, "checkpoints:");
    INFO(line);
    REQUIRE(!line.empty());
    CheckpointLine out;
    out.count = std::stoull(line.substr(line.find_first_of("0123456789")));
    auto comma = line.rfind(", ");
    REQUIRE(comma != std::string::npos);
    std::string rate = line.substr(comma + 2);
    if (rate != "-/s")
        out.per_second = std::stod(rate);
    return out;
}

std::vector<std::string> watch_command(const Pair& pair, const std::string& role, std::vector<std::string> extra) {
    std::vector<std::string> argv{COLOD_COLOCTL_BIN, "--config", pair.config(), "--role", role, "status", "--watch"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return argv;
}

}  // namespace

TEST_CASE("coloctl status --watch on a pipe: plain blocks whose checkpoints grow; SIGINT ends it with 0",
          "[integration][watch]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));

    auto watch = Process::spawn(watch_command(pair, "primary", {"--interval", "0.2"}), pair.log("watch"));
    REQUIRE(watch);
    auto first = next_block(*watch);
    REQUIRE(first);
    std::string first_text;
    for (const auto& line : *first)
        first_text += line + "\n";
    INFO("first block:\n" << first_text);
    CHECK(first->front() == "demo (primary, checkpoint mode)");
    CHECK_THAT(line_of(*first, "state:"), Catch::StartsWith("state:        protected"));
    CHECK_THAT(line_of(*first, "peer:"), Catch::EndsWith(", connected"));
    for (const char* label : {"pause:", "dirty pages:", "replication:", "held output:"})
        CHECK(!line_of(*first, label).empty());
    auto start = checkpoints_of(*first);
    CHECK(!start.per_second);  // nothing to compare the first sample with

    // The refreshes follow the daemon: within a few of them the checkpoints have grown, and the
    // block that shows it has a rate above 0. The daemon checkpoints every 20 ms, so this takes
    // one or two refreshes; a slow machine only takes more of them.
    std::optional<std::vector<std::string>> grown;
    for (int refresh = 0; refresh < 300 && !grown; ++refresh) {
        auto block = next_block(*watch);
        REQUIRE(block);
        for (const auto& line : *block)
            CHECK(line.find('\x1b') == std::string::npos);  // no escape codes on a pipe
        if (checkpoints_of(*block).count > start.count)
            grown = block;
    }
    REQUIRE(grown);
    auto later = checkpoints_of(*grown);
    REQUIRE(later.per_second);
    CHECK(*later.per_second > 0);
    CHECK_THAT(line_of(*grown, "replication:"), !Catch::Contains("- B/s"));

    watch->signal(SIGINT);
    CHECK(watch->exit_code() == 0);
    CHECK(pair.read_log("watch").empty());  // nothing on stderr
}

TEST_CASE("coloctl status --watch ends with 3 when the daemon goes away, and with 0 on SIGTERM",
          "[integration][watch]") {
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));

    // SIGTERM, like SIGINT, is the normal end of a watch.
    {
        auto watch = Process::spawn(watch_command(pair, "primary", {"--interval", "50ms"}), pair.log("watch-term"));
        REQUIRE(watch);
        REQUIRE(next_block(*watch));
        watch->signal(SIGTERM);
        CHECK(watch->exit_code() == 0);
    }

    auto watch = Process::spawn(watch_command(pair, "secondary", {"--interval=0.05"}), pair.log("watch"));
    REQUIRE(watch);
    auto first = next_block(*watch);
    REQUIRE(first);
    CHECK(first->front() == "demo (secondary, checkpoint mode)");
    CHECK_THAT(line_of(*first, "checkpoints:"), Catch::Contains(" applied "));
    pair.secondary()->signal(SIGKILL);
    CHECK(pair.secondary()->exit_code() == 128 + SIGKILL);
    // Refreshes that were under way may still come; then the watch ends.
    while (next_block(*watch)) {
    }
    CHECK(watch->exit_code() == 3);
    CHECK_THAT(pair.read_log("watch"), Catch::Contains("coloctl: the secondary daemon went away"));
}

TEST_CASE("coloctl status --watch refuses a bad --interval, naming the option", "[integration][watch]") {
    Pair pair;  // a config; no daemon is started
    int run = 0;
    auto refused = [&](std::vector<std::string> extra, const std::string& reason) {
        std::string log = "interval-" + std::to_string(run++);
        auto coloctl = Process::spawn(watch_command(pair, "primary", std::move(extra)), pair.log(log));
        REQUIRE(coloctl);
        CHECK(coloctl->exit_code() == 2);
        std::string text = pair.read_log(log);
        INFO(text);
        CHECK_THAT(text, Catch::Contains("--interval"));
        CHECK_THAT(text, Catch::Contains(reason));
    };
    refused({"--interval", "0"}, "must be more than 0");
    refused({"--interval=-1"}, "must be more than 0");
    refused({"--interval", "-1"}, "must be more than 0");
    refused({"--interval", "soon"}, "not a number of seconds");
    refused({"--interval", "1ms"}, "must be at least 10ms");

    // Without --watch, --interval means nothing; --watch means nothing for other commands.
    std::string log = "interval-alone";
    auto alone = Process::spawn({COLOD_COLOCTL_BIN, "--config", pair.config(), "--role", "primary", "status",
                                 "--interval", "2"},
                                pair.log(log));
    REQUIRE(alone);
    CHECK(alone->exit_code() == 2);
    CHECK_THAT(pair.read_log(log), Catch::Contains("--interval goes with status --watch"));
    log = "watch-checkpoint";
    auto other = Process::spawn({COLOD_COLOCTL_BIN, "--config", pair.config(), "--role", "primary", "checkpoint",
                                 "--watch"},
                                pair.log(log));
    REQUIRE(other);
    CHECK(other->exit_code() == 2);
    CHECK_THAT(pair.read_log(log), Catch::Contains("--watch goes with status only"));

    // With nothing at the control socket, the watch ends at once with 3, as status does.
    log = "nobody";
    auto nobody = Process::spawn(watch_command(pair, "primary", {}), pair.log(log));
    REQUIRE(nobody);
    CHECK(nobody->exit_code() == 3);
    CHECK_THAT(pair.read_log(log), Catch::Contains("cannot reach the primary daemon"));
}

namespace {

size_t count_of(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

// The checkpoint count on a captured screen ("checkpoints:  1234 (seq ...").
std::optional<uint64_t> screen_checkpoints(const std::string& screen) {
    auto at = screen.find("checkpoints:");
    if (at == std::string::npos)
        return std::nullopt;
    auto digit = screen.find_first_of("0123456789", at);
    if (digit == std::string::npos || digit > screen.find('\n', at))
        return std::nullopt;
    return std::stoull(screen.substr(digit));
}

}  // namespace

TEST_CASE("coloctl status --watch in a terminal (tmux): one view redrawn in place as the figures move; Ctrl-C ends "
          "it with 0",
          "[integration][watch][tty]") {
    REQUIRE(run_shell("command -v tmux").first == 0);  // packaging/install-deps.sh installs it
    Pair pair;
    pair.start_secondary();
    pair.start_primary();
    REQUIRE(pair.wait_state(Side::Primary, "protected"));

    const std::string session = fmt::format("colod-watch-{}", ::getpid());
    struct Session {
        std::string name;
        ~Session() { run_shell("tmux kill-session -t " + name + " 2>/dev/null"); }
    } guard{session};
    // A 100x40 terminal; once the watch ends, its exit status stays on the screen.
    std::string command = fmt::format("{} --config {} --role primary status --watch --interval 0.2; echo watch-exited-$?; "
                                      "sleep 600",
                                      COLOD_COLOCTL_BIN, pair.config());
    REQUIRE(run_shell(fmt::format("tmux new-session -d -s {} -x 100 -y 40 '{}'", session, command)).first == 0);
    auto capture = [&] { return run_shell("tmux capture-pane -p -t " + session).second; };

    std::string first;
    REQUIRE(eventually([&] {
        first = capture();
        return first.find("state:        protected") != std::string::npos && screen_checkpoints(first);
    }));
    INFO("the screen:\n" << first);
    CHECK(first.find("demo (primary, checkpoint mode)") != std::string::npos);
    CHECK(count_of(first, "state:") == 1);  // one view, not a scroll of blocks
    uint64_t start = *screen_checkpoints(first);

    // Later screens show the figures moving, still one view in place (a pipe would have
    // appended a block per refresh: dozens by now).
    std::string later;
    REQUIRE(eventually([&] {
        later = capture();
        auto now = screen_checkpoints(later);
        return now && *now > start && later.find("/s") != std::string::npos;
    }));
    INFO("later:\n" << later);
    CHECK(count_of(later, "state:") == 1);
    CHECK(count_of(later, "checkpoints:") == 1);
    CHECK(later.find("watch-exited") == std::string::npos);

    REQUIRE(run_shell(fmt::format("tmux send-keys -t {} C-c", session)).first == 0);
    std::string last;
    CHECK(eventually([&] {
        last = capture();
        return last.find("watch-exited-") != std::string::npos;
    }));
    INFO("after Ctrl-C:\n" << last);
    CHECK(last.find("watch-exited-0") != std::string::npos);
}
