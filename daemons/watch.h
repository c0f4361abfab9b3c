// SPDX-License-Identifier: GPL-2.0-or-later
// `coloctl status --watch`: asks the daemon for `status --json` every interval and shows the
// view of daemons/watch_view.h, refreshed in place on a terminal, one block of lines per
// refresh (and an empty line after it) when standard output is anything else.
#pragma once

#include <chrono>
#include <filesystem>
#include <string_view>

#include "base/result.h"

namespace colod::daemons {

inline constexpr std::chrono::microseconds k_watch_default_interval = std::chrono::seconds(1);
// Shorter intervals would only load the daemon's control thread: a person reads no faster.
inline constexpr std::chrono::microseconds k_watch_min_interval = std::chrono::milliseconds(10);
inline constexpr std::chrono::microseconds k_watch_max_interval = std::chrono::hours(1);

// --interval: a number of seconds (2, 0.5) or a duration with its unit as the config file
// writes them (500ms, 2s, 1m); from k_watch_min_interval to k_watch_max_interval. The error (Errc::Invalid) says
// what is wrong without naming the option, which the caller does.
base::Result<std::chrono::microseconds> parse_watch_interval(std::string_view text);

// How a watch ended, as coloctl's exit status.
enum class WatchEnd {
    Interrupted = 0,  // SIGINT or SIGTERM: the normal way to end a watch
    Failed = 1,       // the daemon answered ERR or something coloctl cannot read, or stdout failed
    Unreachable = 3,  // the daemon could not be reached at the start, or went away
};

// Runs the watch until it ends; says why on standard error unless it was interrupted. On a
// terminal, the cursor is hidden while the view runs and shown again however it ends (but a
// SIGKILL). A request the daemon does not answer within 10 seconds counts as the daemon gone,
// as for `coloctl status`. SIGINT and SIGTERM end the watch at once between requests, after
// the request under way otherwise. Ctrl-Z (SIGTSTP) shows the cursor before the process
// stops; the view is drawn again when it continues. `role` names the daemon in messages.
WatchEnd watch_status(const std::filesystem::path& control, std::string_view role,
                      std::chrono::microseconds interval);

}  // namespace colod::daemons
