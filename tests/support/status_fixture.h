// SPDX-License-Identifier: GPL-2.0-or-later
// Status fixtures for the tests of what the daemons make of a status (coloctl's views, the
// metrics exposition): a protected primary's identity, and a text's lines.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "core/status.h"

namespace colod::test {

// A primary of the VM "demo" in checkpoint mode, protected, its guest running on KVM, its
// peer connected and 512 bytes of output held; the counters are the caller's.
inline core::Status protected_primary_base() {
    core::Status s;
    s.vm = "demo";
    s.role = "primary";
    s.mode = "checkpoint";
    s.state = "protected";
    s.backend = "kvm";
    s.guest = "running";
    s.held_output_bytes = 512;
    s.peer_state = "connected";
    return s;
}

inline std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    return lines;
}

}  // namespace colod::test
