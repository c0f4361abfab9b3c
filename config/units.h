// SPDX-License-Identifier: GPL-2.0-or-later
// Durations and sizes as operators write them in the config file, and back again.
//
// Durations: a decimal number and a unit — us, ms, s or m (minutes) — e.g. 100ms, 1.5s, 2m.
// The unit is mandatory: "100" could mean anything. Fractions are allowed as long as the value
// is a whole number of microseconds (1.5s yes, 0.0001ms no).
//
// Sizes: a decimal number and an optional binary multiple K, M, G or T (either case; 1K = 1024),
// optionally followed by B or iB: 256M = 256MiB = 256MB = 268435456. A bare number, or one
// ending in B, counts bytes. Fractions are allowed when the result is a whole number of bytes.
//
// Whitespace between the number and the unit is allowed; a sign is not.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace colod::config {

// The error (Errc::Invalid) is a rule an operator can act on, without the value itself:
// the caller knows which key and value it parsed and says so.
base::Result<std::chrono::microseconds> parse_duration(std::string_view text);
base::Result<uint64_t> parse_size(std::string_view text);

// The shortest exact spelling in the units above, which parse_* read back to the same value:
// 100ms, 1.5s, 2m, 1234.567ms, 0s; 256M, 1.5G, 4K, 1025B.
std::string format_duration(std::chrono::microseconds duration);
std::string format_size(uint64_t bytes);

}  // namespace colod::config
