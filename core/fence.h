// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace colod::core {

struct FenceResult {
    bool ran = false;         // false: no command configured
    bool succeeded = false;   // exited with status 0 within the timeout
    int exit_status = -1;     // exit code, or 128 + signal, or -1 when it could not run
    bool timed_out = false;
    std::string output;       // stdout and stderr, at most 64 KiB
    std::chrono::milliseconds duration{0};
};

// Runs `command` with /bin/sh -c, with `env` ("KEY=value") added to the environment, and waits
// at most `timeout` (then kills its process group). An empty command is "no fencing": ran =
// false, succeeded = true.
FenceResult run_fence(const std::string& command, const std::vector<std::string>& env,
                      std::chrono::milliseconds timeout);

}  // namespace colod::core
