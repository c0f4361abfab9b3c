// SPDX-License-Identifier: GPL-2.0-or-later
// Host time as the software backend's devices see it. KVM's in-kernel devices run on ktime
// (CLOCK_MONOTONIC); so do ours, which keeps GET_PIT2's count_load_time and the LAPIC timer in
// the same time base as real KVM on the same host.
#pragma once

#include <time.h>

#include <cstdint>

namespace colod::kvm::soft {

inline int64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline int64_t boottime_ns() {
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

inline int64_t realtime_ns() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// a * b / c without overflowing the intermediate product.
inline uint64_t mul_div(uint64_t a, uint64_t b, uint64_t c) {
    return static_cast<uint64_t>(static_cast<unsigned __int128>(a) * b / c);
}

// "No deadline" for timer bookkeeping.
inline constexpr int64_t k_never = INT64_MAX;

}  // namespace colod::kvm::soft
