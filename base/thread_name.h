// SPDX-License-Identifier: GPL-2.0-or-later
// Names the calling thread (at most 15 characters), so that `top -H`, `ps -L` and profilers show
// which of a daemon's threads does the work: vcpu0, link-send, tap-rx, ...
#pragma once
#include <pthread.h>

namespace colod::base {

inline void name_thread(const char* name) { pthread_setname_np(pthread_self(), name); }

}  // namespace colod::base
