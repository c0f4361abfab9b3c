// SPDX-License-Identifier: GPL-2.0-or-later
// One daemon of a pair, whichever program it is: the guest runtime, the replication engine
// that fits its part (active or standby), the control socket, sd_notify and signals.
#pragma once

#include "config/config.h"

namespace colod::daemons {

// Exit codes of colod-primary and colod-secondary (documented in the man pages).
constexpr int k_exit_ok = 0;        // stopped cleanly: signal, coloctl stop, guest power-off
constexpr int k_exit_failure = 1;   // a runtime failure: the log says which
constexpr int k_exit_usage = 2;     // bad command line or config
constexpr int k_exit_refused = 3;   // the peer already runs the guest: this side must not

enum class Program { Primary, Secondary };
enum class Protection { Replicated, Standalone };

// Runs the daemon until it stops; returns its exit code.
int run_node(const config::PairConfig& config, Program program, Protection protection);

}  // namespace colod::daemons
