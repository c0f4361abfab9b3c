// SPDX-License-Identifier: GPL-2.0-or-later
// A numeric network endpoint from the config file: "10.0.0.1:9400" or "[fd00::1]:9400", and
// a console's address, which may also be a unix socket: "unix:/run/colod/demo-console.sock".
//
// Host names are refused on purpose: a pair must keep working while DNS is down (that is
// exactly when failover happens), and an address that resolves differently on the two hosts
// would make them disagree about who is who.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
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

// sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
constexpr size_t k_max_socket_path = 107;

// Where a guest's console listens: a TCP endpoint, or a unix stream socket that only users
// allowed by its mode (0600: the daemon's own user) can open.
struct ConsoleAddress {
    Endpoint tcp;                     // when unix_path is empty
    std::filesystem::path unix_path;  // absolute, in normal form; empty for a TCP console

    bool is_unix() const { return !unix_path.empty(); }
    // Reachable from this host only: a unix socket, or a TCP console on 127.0.0.0/8 or ::1.
    // Anything else (a wildcard too) lets whoever reaches the address drive the guest.
    bool is_local() const { return is_unix() || tcp.is_loopback(); }
    // "127.0.0.1:4555" or "unix:/run/colod/demo-console.sock": the syntax parse_console_address reads.
    std::string to_string() const;

    bool operator==(const ConsoleAddress&) const = default;
};

// An endpoint, or "unix:" and an absolute path of at most k_max_socket_path bytes. Checks the
// text only; whether the socket's directory exists is the config's question. The error
// (Errc::Invalid) states the rule, without the value.
base::Result<ConsoleAddress> parse_console_address(std::string_view text);

}  // namespace colod::config
