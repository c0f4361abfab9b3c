// SPDX-License-Identifier: GPL-2.0-or-later
// Whole-machine snapshots: all RAM plus every vCPU, VM-wide and device state, in one file in
// the replication protocol's section format (proto/state.h, "Snapshot files").
#pragma once

#include <string>

#include "base/result.h"
#include "proto/messages.h"

namespace colod::core {

class Machine;

// Writes a snapshot of `machine` to `path` (atomically: temporary file, fsync, rename). The
// machine must be paused or not yet started. `identity` is machine_identity() of it.
base::Result<void> save_snapshot(Machine& machine, const proto::Hello& identity, const std::string& path);

// Loads a snapshot into `machine`, which must be paused or not yet started and whose identity
// is `identity`. The whole file is validated (every CRC, every section, the identity) before
// anything is changed.
base::Result<void> load_snapshot(Machine& machine, const proto::Hello& identity, const std::string& path);

}  // namespace colod::core
