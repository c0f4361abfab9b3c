// SPDX-License-Identifier: GPL-2.0-or-later
// A TCP port on 127.0.0.1 that nothing listens on right now, for a daemon's endpoint in a test.
//
// Chosen below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by
// default), so that no outgoing connection of a daemon started meanwhile can take it as its
// source port before the daemon meant to listen there binds it, and never handed out twice by
// one test process (a port closed a moment ago is free again at once).
#pragma once

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <mutex>
#include <random>
#include <set>

#include "base/fd.h"

namespace colod::test {

inline uint16_t free_port() {
    constexpr uint16_t k_first = 10000, k_last = 32000;
    static std::mutex mutex;
    static std::set<uint16_t> handed_out;
    static std::mt19937 random{std::random_device{}()};
    std::lock_guard lock(mutex);
    std::uniform_int_distribution<int> pick(k_first, k_last);
    for (int attempt = 0; attempt < 1000; ++attempt) {
        auto port = static_cast<uint16_t>(pick(random));
        if (handed_out.contains(port))
            continue;
        base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(fd.get() >= 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(port);
        if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0)
            continue;  // in use (or in TIME_WAIT): another one
        handed_out.insert(port);
        return port;
    }
    FAIL("no free TCP port between " << k_first << " and " << k_last << " after 1000 tries");
    return 0;
}

}  // namespace colod::test
