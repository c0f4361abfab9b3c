// SPDX-License-Identifier: GPL-2.0-or-later
// Fault points for the reliability tests: named places in the replication path where a test
// build can make the daemon die or stall, to prove that no step of the protocol loses what a
// client was told. They exist only when the build sets COLOD_FAULT_POINTS (tests/run.sh does;
// packages do not), so a release build cannot reach them.
//
// COLOD_FAULT="NAME:ACTION[@N][,NAME:ACTION[@N]...]" arms them: ACTION is `kill` (SIGKILL to
// itself, as a host dying) or `stall=MS` (the thread sleeps, the process stays up); @N fires on
// the N-th time the point is reached (default 1). Each point fires once.
//
// `hit` does nothing itself: fault_point() returns true, and the caller carries the fault out
// (secondary.replica-stop: the COLO secondary's replica stops as if it had crashed).
//
// `log.write:stall=MS[@N]` is a slow log disk: from the N-th record on, every log record waits
// MS before it is written (the thread that logs waits, as with a full journal).
#pragma once

#include <string_view>

#include "base/log.h"

namespace colod::core {

#ifdef COLOD_FAULT_POINTS
// True when the point fired with the action `hit`.
bool fault_point(std::string_view name);
// The sink, slowed down when `log.write` is armed.
base::LogSink fault_log_sink(base::LogSink sink);
#else
inline bool fault_point(std::string_view) { return false; }
inline base::LogSink fault_log_sink(base::LogSink sink) { return sink; }
#endif

}  // namespace colod::core
