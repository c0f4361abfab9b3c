// SPDX-License-Identifier: GPL-2.0-or-later
// Names the calling thread (at most 15 characters), so that `top -H`, `ps -L` and profilers show
// which of a daemon's threads does the work: vcpu0, link-send, tap-rx, ...
#pragma once
#include <pthread.h>

#include <thread>
#include <utility>

namespace colod::base {

inline void name_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

// A thread running `body` under `name`.
template <typename Body>
std::thread named_thread(const char* name, Body&& body) {
    return std::thread([name, body = std::forward<Body>(body)]() mutable {
        name_thread(name);
        body();
    });
}

}  // namespace colod::base
