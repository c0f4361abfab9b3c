// SPDX-License-Identifier: GPL-2.0-or-later
// What `coloctl status --watch` shows: a pure function of two consecutive samples of a daemon's
// status and the time between them, so that it is tested without a daemon (daemons/watch.h
// takes the samples and writes the frames).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace colod::daemons {

// The block of lines one refresh shows: the VM, role and mode; the state; the peer; the last
// and p99 pause; dirty pages (the last checkpoint's, and per second); replication bytes per
// second; held output; checkpoints (the count, the seq, and per second). Plain ASCII, each
// line ending in '\n', no escape codes.
//
// `before` is the sample taken `elapsed` before `after`, nullopt for the first one. A rate is
// a counter's growth over `elapsed`, in the daemon's own units; it shows as "-" when there is
// nothing to compare with: the first sample, no time between the two, a daemon that restarted
// in between (its uptime went down), or a counter that went down (a standby that takes over
// starts a new engine's figures from 0).
std::string watch_view(const std::optional<core::Status>& before, const core::Status& after,
                       std::chrono::nanoseconds elapsed);

// How a refresh goes to a terminal. The first one clears the screen and hides the cursor; the
// next ones move to the top-left corner and overwrite the lines in place.
enum class Refresh { First, Next };

// A block from watch_view as one terminal refresh: each line cut at `columns` (0: not cut) and
// cleared to its end, then the rest of the screen cleared, so that a shorter block leaves
// nothing of the last one. Cutting keeps one block line on one screen line, so nothing wraps.
std::string watch_terminal_frame(std::string_view block, size_t columns, Refresh refresh);

// What a watch writes to the terminal as it ends: erases what the terminal echoed of the key
// that ended it (^C) on the line under the block, and shows the cursor again.
inline constexpr std::string_view k_watch_terminal_end = "\r\x1b[K\x1b[?25h";

// The formats of the view's figures (exposed for the tests): a byte rate in binary units
// ("512 B/s", "1.5 KiB/s", "12.3 MiB/s"), a size ("0 B", "2.0 KiB"), and a duration in
// microseconds ("80 us" under 10 ms, "12.3 ms" under a second, then "1.50 s").
std::string byte_rate_text(double bytes_per_second);
std::string size_text(uint64_t bytes);
std::string pause_text(uint64_t us);

}  // namespace colod::daemons
