// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/watch_view.h"

#include <array>

#include <fmt/format.h>

namespace colod::daemons {

namespace {

// What each state means, in a few words after it (the states of docs/engines.md).
std::string_view state_hint(std::string_view state) {
    if (state == "syncing")
        return "the live copy to the standby is under way";
    if (state == "protected")
        return "the standby holds every committed checkpoint";
    if (state == "unprotected")
        return "the guest runs without a replica";
    if (state == "standby")
        return "holds the replica, ready to take over";
    if (state == "active")
        return "took over: the guest runs here, without a replica";
    if (state == "stopped")
        return "the guest has stopped";
    return {};
}

// A counter's growth per second between two samples, or nullopt when they do not give one
// (no earlier sample, no time between them, or the counter went down).
std::optional<double> rate(std::optional<uint64_t> before, uint64_t after, std::chrono::nanoseconds elapsed) {
    if (!before || elapsed.count() <= 0 || after < *before)
        return std::nullopt;
    return static_cast<double>(after - *before) / std::chrono::duration<double>(elapsed).count();
}

std::string per_second_text(std::optional<double> value) {
    return value ? fmt::format("{:.1f}/s", *value) : std::string("-/s");
}

constexpr std::array<std::string_view, 4> k_binary_units{"KiB", "MiB", "GiB", "TiB"};

}  // namespace

std::string byte_rate_text(double bytes_per_second) {
    if (bytes_per_second < 1024)
        return fmt::format("{:.0f} B/s", bytes_per_second);
    double value = bytes_per_second / 1024;
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < k_binary_units.size()) {
        value /= 1024;
        ++unit;
    }
    return fmt::format("{:.1f} {}/s", value, k_binary_units[unit]);
}

std::string size_text(uint64_t bytes) {
    if (bytes < 1024)
        return fmt::format("{} B", bytes);
    double value = static_cast<double>(bytes) / 1024;
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < k_binary_units.size()) {
        value /= 1024;
        ++unit;
    }
    return fmt::format("{:.1f} {}", value, k_binary_units[unit]);
}

std::string pause_text(uint64_t us) {
    if (us < 10'000)
        return fmt::format("{} us", us);
    if (us < 1'000'000)
        return fmt::format("{:.1f} ms", static_cast<double>(us) / 1e3);
    return fmt::format("{:.2f} s", static_cast<double>(us) / 1e6);
}

std::string watch_view(const std::optional<core::Status>& previous, const core::Status& s,
                       std::chrono::nanoseconds elapsed) {
    // A daemon that restarted between the samples (the same socket, a new process) has counters
    // that began again: nothing to compare with.
    std::optional<core::Status> before = previous;
    if (before && s.uptime_ms < before->uptime_ms)
        before.reset();
    const bool standby = s.state == "standby";

    std::string out = fmt::format("{} ({}, {} mode)\n", s.vm, s.role, s.mode);
    std::string_view hint = state_hint(s.state);
    out += fmt::format("state:        {}{}\n", s.state, hint.empty() ? std::string() : fmt::format(" ({})", hint));
    if (s.peer_state == "none" || s.peer_state.empty())
        out += "peer:         none\n";
    else
        out += fmt::format("peer:         {}, {}\n", s.peer.empty() ? "-" : s.peer, s.peer_state);

    if (s.pause_us.last == 0 && s.pause_us.max == 0)
        out += standby ? "pause:        none (the active side pauses the guest)\n" : "pause:        none yet\n";
    else
        out += fmt::format("pause:        last {}, p99 {}\n", pause_text(s.pause_us.last), pause_text(s.pause_us.p99));

    // Each counter as it was in the earlier sample, nullopt without one.
    auto earlier = [&](auto field) -> std::optional<uint64_t> {
        if (!before)
            return std::nullopt;
        return field(*before);
    };
    auto dirty_rate = rate(earlier([](const core::Status& b) { return b.dirty_pages.total; }), s.dirty_pages.total,
                           elapsed);
    out += fmt::format("dirty pages:  last {}, {}\n", s.dirty_pages.last, per_second_text(dirty_rate));

    auto bytes_rate = rate(earlier([](const core::Status& b) { return b.bytes_sent; }), s.bytes_sent, elapsed);
    if (standby && s.bytes_sent == 0)
        out += "replication:  - (a standby sends no guest state)\n";
    else
        out += fmt::format("replication:  {} sent\n", bytes_rate ? byte_rate_text(*bytes_rate) : "- B/s");

    out += fmt::format("held output:  {}\n", size_text(s.held_output_bytes));

    auto checkpoint_rate =
        rate(earlier([](const core::Status& b) { return b.checkpoints; }), s.checkpoints, elapsed);
    out += fmt::format("checkpoints:  {}{} (seq {}), {}\n", s.checkpoints, standby ? " applied" : "", s.seq,
                       per_second_text(checkpoint_rate));
    return out;
}

std::string watch_terminal_frame(std::string_view block, size_t columns, Refresh refresh) {
    // ESC[?25l hides the cursor, ESC[2J clears the screen, ESC[H moves to the top-left corner,
    // ESC[K clears to the end of the line, ESC[J to the end of the screen.
    std::string out = refresh == Refresh::First ? "\x1b[?25l\x1b[2J\x1b[H" : "\x1b[H";
    while (!block.empty()) {
        size_t end = block.find('\n');
        std::string_view line = block.substr(0, end);
        block.remove_prefix(end == std::string_view::npos ? block.size() : end + 1);
        if (columns > 0 && line.size() > columns)
            line = line.substr(0, columns);
        out += line;
        out += "\x1b[K\n";
    }
    out += "\x1b[J";
    return out;
}

}  // namespace colod::daemons
