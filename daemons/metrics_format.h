// SPDX-License-Identifier: GPL-2.0-or-later
// One daemon's status as Prometheus metrics, in the text exposition format version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/). A pure function of a
// core::Status, so that the format is tested without a daemon; daemons/metrics.h serves it.
//
// Every metric carries a `vm` label. The names follow Prometheus' conventions: the `colod_`
// prefix, base units (seconds, bytes), `_total` on counters, one gauge per possible value of
// an enumeration (1 for the current value). docs/operator-guide.md lists them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace colod::daemons {

// The Content-Type of the text format.
inline constexpr std::string_view k_metrics_content_type = "text/plain; version=0.0.4; charset=utf-8";

// The whole exposition: `# HELP` and `# TYPE` before each family, one sample per line, a
// newline at the end.
std::string metrics_text(const core::Status& status);

// A label value as the format writes it between double quotes: backslash, double quote and
// line feed escaped (\\, \", \n), everything else as it is.
std::string escape_label_value(std::string_view value);

// Microseconds as seconds in decimal, exact and without trailing zeros: 50 -> "0.00005",
// 2500000 -> "2.5", 1000000 -> "1".
std::string seconds_text(uint64_t us);

}  // namespace colod::daemons
