// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <string>

#include "core/status.h"

namespace colod::daemons {

// One JSON object with the keys DESIGN.md promises (and a few more).
std::string status_json(const core::Status& status);
// The same for people: one "key: value" per line.
std::string status_text(const core::Status& status);

}  // namespace colod::daemons
