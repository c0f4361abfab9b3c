// SPDX-License-Identifier: GPL-2.0-or-later
// Which KVM backend guest tests run on: COLOD_TEST_BACKEND if set, else the host's KVM when
// /dev/kvm can be opened, else the software backend. Says which, loudly, once per process.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace colod::test {

// COLOD_HOST_KVM=0 (tests/run.sh sets it on a host whose /dev/kvm is an emulating KVM, the
// kvm_pvm module, which runs no Linux guest) makes this host count as one without /dev/kvm.
inline bool host_kvm_available() {
    if (const char* allowed = std::getenv("COLOD_HOST_KVM"); allowed && std::string_view(allowed) == "0")
        return false;
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return false;
    ::close(fd);
    return true;
}

// How much slower than real hardware this run's guests and daemons are: COLOD_TEST_TIME_SCALE
// (1 by default; tests/hostkvm/nested.sh sets it for a KVM nested in an emulated machine, where
// everything runs 50-100 times slower). Every timeout a test waits for an event is multiplied
// by it; no test asserts a duration.
inline int time_scale() {
    static const int scale = [] {
        const char* text = std::getenv("COLOD_TEST_TIME_SCALE");
        int value = text && *text ? std::atoi(text) : 1;
        return value < 1 ? 1 : (value > 1000 ? 1000 : value);
    }();
    return scale;
}

template <typename Duration>
Duration scaled(Duration timeout) {
    return timeout * time_scale();
}

inline std::string test_backend() {
    static const std::string backend = [] {
        std::string chosen;
        const char* forced = std::getenv("COLOD_TEST_BACKEND");
        if (forced && *forced)
            chosen = forced;
        else
            chosen = host_kvm_available() ? "kvm" : "soft";
        std::fprintf(stderr, "[colod tests] guests run on the %s backend%s\n", chosen.c_str(),
                     chosen == "soft" && !host_kvm_available() ? " (no usable /dev/kvm on this host)" : "");
        return chosen;
    }();
    return backend;
}

}  // namespace colod::test
