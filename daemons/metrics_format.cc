// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/metrics_format.h"

#include <algorithm>
#include <array>
#include <initializer_list>
#include <utility>

#include <fmt/format.h>

namespace colod::daemons {

namespace {

// The values of Status::state and Status::role; each gets its own sample of colod_state and
// colod_role so that a value missing from a scrape never reads as "no data".
constexpr std::array<std::string_view, 6> k_states{"syncing", "protected", "unprotected",
                                                   "standby", "active",    "stopped"};
constexpr std::array<std::string_view, 2> k_roles{"primary", "secondary"};

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Builds the exposition one family at a time: the family's HELP and TYPE, then its samples,
// each with the vm label first.
class Exposition {
public:
    explicit Exposition(std::string_view vm) : m_vm_label(fmt::format("vm=\"{}\"", escape_label_value(vm))) {}

    void family(std::string_view name, std::string_view type, std::string_view help) {
        m_text += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    void sample(std::string_view name, std::string_view value, Labels labels = {}) {
        m_text += name;
        m_text += '{';
        m_text += m_vm_label;
        for (const auto& [label, label_value] : labels)
            m_text += fmt::format(",{}=\"{}\"", label, escape_label_value(label_value));
        m_text += "} ";
        m_text += value;
        m_text += '\n';
    }
    void sample(std::string_view name, uint64_t value, Labels labels = {}) {
        sample(name, std::to_string(value), labels);
    }
    // One gauge family with a sample per value of an enumeration, 1 for `current`; a current
    // value outside the list gets a sample of its own.
    template <size_t N>
    void enumeration(std::string_view name, std::string_view help, std::string_view label,
                     const std::array<std::string_view, N>& values, std::string_view current) {
        family(name, "gauge", help);
        for (auto value : values)
            sample(name, value == current ? 1 : 0, {{label, value}});
        if (!current.empty() && std::find(values.begin(), values.end(), current) == values.end())
            sample(name, 1, {{label, current}});
    }
    void gauge(std::string_view name, std::string_view help, std::string_view value) {
        family(name, "gauge", help);
        sample(name, value);
    }
    void gauge(std::string_view name, std::string_view help, uint64_t value) {
        gauge(name, help, std::to_string(value));
    }
    void counter(std::string_view name, std::string_view help, uint64_t value) {
        family(name, "counter", help);
        sample(name, value);
    }

    std::string take() { return std::move(m_text); }

private:
    std::string m_vm_label;
    std::string m_text;
};

}  // namespace

std::string escape_label_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        switch (c) {
        case '\\': out += "\\\\"; break;
        case '"': out += "\\\""; break;
        case '\n': out += "\\n"; break;
        default: out += c;
        }
    }
    return out;
}

std::string seconds_text(uint64_t us) {
    std::string text = fmt::format("{}.{:06}", us / 1'000'000, us % 1'000'000);
    while (text.back() == '0')
        text.pop_back();
    if (text.back() == '.')
        text.pop_back();
    return text;
}

namespace {

// The guest's NIC, only when it has one ([vm] net-tap).
void network_metrics(Exposition& out, const core::Status::Network& n) {
    out.family("colod_net_frames_total", "counter",
               "Frames through the guest's NIC since the daemon started: tx (the guest sent), rx (the guest "
               "received).");
    out.sample("colod_net_frames_total", n.tx_frames, {{"direction", "tx"}});
    out.sample("colod_net_frames_total", n.rx_frames, {{"direction", "rx"}});
    out.family("colod_net_bytes_total", "counter", "Bytes of those frames (without the virtio header).");
    out.sample("colod_net_bytes_total", n.tx_bytes, {{"direction", "tx"}});
    out.sample("colod_net_bytes_total", n.rx_bytes, {{"direction", "rx"}});
    out.family("colod_net_dropped_frames_total", "counter",
               "Frames dropped, by where: rx (for the guest, its receive backlog full), tap (for the network, the "
               "tap's queue full), replica_input (a COLO secondary's copy of the primary's input, its queue "
               "full; each costs a checkpoint).");
    out.sample("colod_net_dropped_frames_total", n.rx_dropped, {{"where", "rx"}});
    out.sample("colod_net_dropped_frames_total", n.tap_dropped, {{"where", "tap"}});
    out.sample("colod_net_dropped_frames_total", n.input_dropped, {{"where", "replica_input"}});
    out.gauge("colod_net_rx_backlog_frames", "Frames for the guest waiting for its receive buffers.", n.rx_backlog);
    out.counter("colod_net_bad_chains_total", "Transmit or receive chains the guest's driver got wrong.",
                n.bad_chains);
    out.counter("colod_net_announcements_total",
                "Rounds of gratuitous ARP and RARP sent for the guest's MAC (a takeover sends them).",
                n.announcements);
}

// The guest's disk, only when it has one ([vm] disk).
void disk_metrics(Exposition& out, const core::Status::Disk& d) {
    out.gauge("colod_disk_size_bytes", "The guest disk's size.", d.bytes);
    out.gauge("colod_disk_copy_progress_ratio",
              "The disk's live copy (this or the last session): the share of its blocks compared.",
              fmt::format("{}", d.blocks == 0 ? 0.0 : static_cast<double>(d.copied_blocks) / static_cast<double>(d.blocks)));
    out.counter("colod_disk_sent_bytes_total",
                "Disk bytes replicated: sent by the active side (the copy's blocks and every checkpoint's writes), "
                "received by the standby.",
                d.sent_bytes);
    out.counter("colod_disk_checkpoint_bytes_total",
                "Bytes of guest disk writes carried by checkpoints (active side) or committed into the image "
                "(standby).",
                d.checkpoint_bytes);
}

}  // namespace

std::string metrics_text(const core::Status& s) {
    Exposition out(s.vm);
    out.family("colod_info", "gauge", "Always 1: the pair's replication mode and this daemon's backend, as labels.");
    out.sample("colod_info", 1, {{"mode", s.mode}, {"backend", s.backend}});
    out.enumeration("colod_role", "The daemon's part in the pair (colod-primary or colod-secondary): 1 for its role.",
                    "role", k_roles, s.role);
    out.enumeration("colod_state", "The daemon's replication state: 1 for the current one (docs/engines.md).", "state",
                    k_states, s.state);
    out.gauge("colod_guest_running", "1 while the guest runs on this host.", s.guest == "running" ? 1 : 0);
    out.gauge("colod_peer_connected", "1 while the replication link to the peer is up.",
              s.peer_state == "connected" ? 1 : 0);
    out.gauge("colod_sync_progress_ratio",
              "The live copy to the standby: the share of guest RAM copied while syncing, 1 once a committed "
              "checkpoint protects the guest, 0 without a peer.",
              fmt::format("{}", std::clamp(s.sync_progress, 0.0, 1.0)));
    out.gauge("colod_checkpoint_seq", "The last committed checkpoint's number.", s.seq);

    // The checkpoints the active side took, each under one cause (those the engine does not count
    // as forced or mismatch came at the interval); a standby takes none, it applies them.
    uint64_t taken = s.checkpoints - std::min(s.checkpoints_applied, s.checkpoints);
    uint64_t forced = std::min(s.checkpoints_forced, taken);
    uint64_t mismatch = std::min(s.checkpoints_mismatch, taken - forced);
    out.family("colod_checkpoints_total", "counter",
               "Checkpoints this daemon took and the standby committed, by cause: interval (checkpoint-interval "
               "elapsed), forced (coloctl checkpoint, held output over max-held-output, a handover, a lagging "
               "COLO secondary, the end of a live sync), mismatch (COLO outputs differed).");
    out.sample("colod_checkpoints_total", taken - forced - mismatch, {{"cause", "interval"}});
    out.sample("colod_checkpoints_total", forced, {{"cause", "forced"}});
    out.sample("colod_checkpoints_total", mismatch, {{"cause", "mismatch"}});
    out.counter("colod_checkpoints_applied_total",
                "Checkpoints this daemon applied as the standby (complete, verified, then loaded).",
                s.checkpoints_applied);

    // Buckets are cumulative in the format (each counts every sample at most its bound); +Inf
    // and _count are all of them.
    out.family("colod_checkpoint_pause_seconds", "histogram",
               "How long the guest stood still for each checkpoint (the capture; the transfer runs after it "
               "resumes).");
    uint64_t cumulative = 0;
    for (size_t i = 0; i < core::k_pause_buckets_us.size(); ++i) {
        cumulative += s.pause_histogram.counts[i];
        out.sample("colod_checkpoint_pause_seconds_bucket", cumulative,
                   {{"le", seconds_text(core::k_pause_buckets_us[i])}});
    }
    uint64_t all = std::max(cumulative, s.pause_histogram.count);
    out.sample("colod_checkpoint_pause_seconds_bucket", all, {{"le", "+Inf"}});
    out.sample("colod_checkpoint_pause_seconds_sum", seconds_text(s.pause_histogram.sum_us));
    out.sample("colod_checkpoint_pause_seconds_count", all);

    out.counter("colod_dirty_pages_total",
                "Guest pages carried by checkpoints (sent on the active side, applied on "
                "the standby).",
                s.dirty_pages.total);
    out.counter("colod_replication_sent_bytes_total",
                "Bytes of guest state sent to the peer: the live copy and every checkpoint.", s.bytes_sent);
    out.gauge("colod_held_output_bytes",
              "Guest output (console bytes, network frames) held until the checkpoint that produced it commits.",
              s.held_output_bytes);
    out.counter("colod_failovers_total",
                "Takeovers by this daemon: failovers, coloctl failover and planned switchovers (handovers).",
                s.failovers);
    out.gauge("colod_last_failover_duration_seconds",
              "The last takeover here: from the decision (the primary declared lost) until the guest ran; 0 "
              "before any.",
              seconds_text(s.last_failover_us));
    out.gauge("colod_console_clients", "Clients connected to the guest's console.", s.console_clients);
    out.gauge("colod_uptime_seconds", "Time since the daemon started.", seconds_text(s.uptime_ms * 1000));
    if (s.network.present)
        network_metrics(out, s.network);
    if (s.disk.present)
        disk_metrics(out, s.disk);
    return out.take();
}

}  // namespace colod::daemons
