// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/status_format.h"

#include <fmt/format.h>

namespace colod::daemons {

namespace {

std::string quoted(const std::string& text) {
    std::string out = "\"";
    for (unsigned char c : text) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20)
                out += fmt::format("\\u{:04x}", c);
            else
                out += static_cast<char>(c);
        }
    }
    return out + "\"";
}

std::string network_json(const core::Status::Network& n) {
    if (!n.present)
        return "null";
    return fmt::format("{{\"tap\": {}, \"tx_frames\": {}, \"tx_bytes\": {}, \"rx_frames\": {}, \"rx_bytes\": {}, "
                       "\"rx_dropped\": {}, \"rx_backlog\": {}, \"tap_dropped\": {}, \"bad_chains\": {}, "
                       "\"input_dropped\": {}, \"announcements\": {}, \"compare_us\": {{\"p50\": {}, \"p99\": {}}}}}",
                       quoted(n.tap), n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes, n.rx_dropped, n.rx_backlog,
                       n.tap_dropped, n.bad_chains, n.input_dropped, n.announcements, n.compare_us_p50,
                       n.compare_us_p99);
}

std::string network_text(const core::Status::Network& n) {
    if (!n.present)
        return {};
    return fmt::format("network:         tap {}: tx {} frames ({} bytes), rx {} frames ({} bytes); dropped: rx {}, tap {}, "
                       "replica input {}; backlog {}, bad chains {}, announcements {}{}\n",
                       n.tap, n.tx_frames, n.tx_bytes, n.rx_frames, n.rx_bytes, n.rx_dropped, n.tap_dropped,
                       n.input_dropped, n.rx_backlog, n.bad_chains, n.announcements,
                       n.compare_us_p50 || n.compare_us_p99
                           ? fmt::format("; compared in p50 {} us, p99 {} us", n.compare_us_p50, n.compare_us_p99)
                           : std::string());
}

std::string disk_json(const core::Status::Disk& d) {
    if (!d.present)
        return "null";
    return fmt::format("{{\"bytes\": {}, \"blocks\": {}, \"copied_blocks\": {}, \"sent_blocks\": {}, "
                       "\"sent_bytes\": {}, \"checkpoint_bytes\": {}}}",
                       d.bytes, d.blocks, d.copied_blocks, d.sent_blocks, d.sent_bytes, d.checkpoint_bytes);
}

std::string disk_text(const core::Status::Disk& d) {
    if (!d.present)
        return {};
    return fmt::format("disk:            {} bytes; copy: {} of {} blocks compared, {} sent; {} bytes sent in all, {} "
                       "carried by checkpoints\n",
                       d.bytes, d.copied_blocks, d.blocks, d.sent_blocks, d.sent_bytes, d.checkpoint_bytes);
}

}  // namespace

std::string status_json(const core::Status& s) {
    return fmt::format(
        "{{\"vm\": {}, \"role\": {}, \"mode\": {}, \"state\": {}, \"seq\": {}, \"checkpoints\": {}, "
        "\"pause_us\": {{\"last\": {}, \"p50\": {}, \"p99\": {}, \"max\": {}}}, "
        "\"dirty_pages\": {{\"last\": {}, \"total\": {}}}, \"bytes_sent\": {}, \"held_output_bytes\": {}, "
        "\"peer\": {}, \"peer_state\": {}, \"backend\": {}, \"guest\": {}, \"uptime_ms\": {}, "
        "\"console_clients\": {}, \"checkpoints_mismatch\": {}, \"checkpoints_interval\": {}, "
        "\"compare_us\": {{\"p50\": {}, \"p99\": {}}}, \"network\": {}, \"disk\": {}}}\n",
        quoted(s.vm), quoted(s.role), quoted(s.mode), quoted(s.state), s.seq, s.checkpoints, s.pause_us.last,
        s.pause_us.p50, s.pause_us.p99, s.pause_us.max, s.dirty_pages.last, s.dirty_pages.total, s.bytes_sent,
        s.held_output_bytes, quoted(s.peer), quoted(s.peer_state), quoted(s.backend), quoted(s.guest), s.uptime_ms,
        s.console_clients, s.checkpoints_mismatch, s.checkpoints_interval, s.compare_us_p50, s.compare_us_p99,
        network_json(s.network), disk_json(s.disk));
}

std::string status_text(const core::Status& s) {
    return fmt::format(
        "vm:              {}\nrole:            {}\nmode:            {}\nstate:           {}\nguest:           {}\n"
        "backend:         {}\npeer:            {} ({})\ncheckpoint seq:  {} ({} checkpoints)\n"
        "pause (us):      last {}  p50 {}  p99 {}  max {}\ndirty pages:     last {}  total {}\n"
        "bytes sent:      {}\nheld output:     {} bytes\nconsole clients: {}\nuptime:          {:.1f} s\n"
        "{}{}{}",
        s.vm, s.role, s.mode, s.state, s.guest, s.backend, s.peer.empty() ? "-" : s.peer, s.peer_state, s.seq,
        s.checkpoints, s.pause_us.last, s.pause_us.p50, s.pause_us.p99, s.pause_us.max, s.dirty_pages.last,
        s.dirty_pages.total, s.bytes_sent, s.held_output_bytes, s.console_clients,
        static_cast<double>(s.uptime_ms) / 1000.0,
        s.mode == "colo" ? fmt::format("colo:            {} checkpoints on mismatch, {} others; compare p50 {} us  p99 {} us\n",
                                       s.checkpoints_mismatch, s.checkpoints_interval, s.compare_us_p50, s.compare_us_p99)
                         : std::string(),
        network_text(s.network), disk_text(s.disk));
}

}  // namespace colod::daemons
