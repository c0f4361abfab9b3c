// SPDX-License-Identifier: GPL-2.0-or-later
// Fault points for the reliability tests: named places in the replication path where a test
// build can make the daemon die or stall, to prove that no step of the protocol loses what a
// client was told. They exist only when the build sets COLOD_FAULT_POINTS (tests/run.sh does;
// packages do not), so a release build cannot reach them.
//
// COLOD_FAULT="NAME:ACTION[@N][,NAME:ACTION[@N]...]" arms them: ACTION is `kill` (SIGKILL to
// itself, as a host dying) or `stall=MS` (the thread sleeps, the process stays up); @N fires on
// the N-th time the point is reached (default 1). Each point fires once.
#pragma once

#include <string_view>

namespace colod::core {

#ifdef COLOD_FAULT_POINTS
void fault_point(std::string_view name);
#else
inline void fault_point(std::string_view) {}
#endif

}  // namespace colod::core
