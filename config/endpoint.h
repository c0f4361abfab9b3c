// SPDX-License-Identifier: GPL-2.0-or-later
// A numeric network endpoint from the config file: "10.0.0.1:9400" or "[fd00::1]:9400".
//
// Host names are refused on purpose: a pair must keep working while DNS is down (that is
// exactly when failover happens), and an address that resolves differently on the two hosts
// would make them disagree about who is who.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace colod::config {

enum class AddressFamily { Ipv4, Ipv6 };

struct Endpoint {
    AddressFamily family = AddressFamily::Ipv4;
    std::string host;  // canonical numeric form without brackets: "10.0.0.1", "fd00::1"
    uint16_t port = 0;

    // "10.0.0.1:9400", "[fd00::1]:9400": the same syntax parse_endpoint reads.
    std::string to_string() const;
    // 0.0.0.0 or [::]: listening there takes the port on every address of the host.
    bool is_wildcard() const;
    // 127.0.0.0/8 or ::1.
    bool is_loopback() const;

    bool operator==(const Endpoint&) const = default;
};

// The error (Errc::Invalid) states the rule, without the value.
base::Result<Endpoint> parse_endpoint(std::string_view text);

}  // namespace colod::config
