// SPDX-License-Identifier: GPL-2.0-or-later
// The closed list of COLOD_EVENT values as the tests see it: base::event_name over the
// COLOD_EVENTS X-macro, without Event::None (plain messages carry no COLOD_EVENT).
#pragma once

#include <set>
#include <string>

#include "base/events.h"

namespace colod::test {

inline std::set<std::string> closed_event_names() {
    std::set<std::string> names;
#define COLOD_COLLECT_EVENT(name, text) names.emplace(colod::base::event_name(colod::base::Event::name));
    COLOD_EVENTS(COLOD_COLLECT_EVENT)
#undef COLOD_COLLECT_EVENT
    names.erase("");
    return names;
}

}  // namespace colod::test
