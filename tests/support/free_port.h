// SPDX-License-Identifier: GPL-2.0-or-later
// A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's choice for a bind to
// port 0), for a daemon's endpoint in a test.
#pragma once

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

#include "base/fd.h"

namespace colod::test {

inline uint16_t free_port() {
    base::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
    socklen_t length = sizeof(address);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&address), &length);
    return ntohs(address.sin_port);
}

}  // namespace colod::test
