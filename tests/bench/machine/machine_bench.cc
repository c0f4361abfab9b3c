// SPDX-License-Identifier: GPL-2.0-or-later
// Host-side costs of the checkpoint path, on the embedded kvstore guest:
//   1. pause + resume latency over 1000 cycles, beside a thread wake-up round trip;
//   2. dirty-log harvest and capture (copy of the dirty pages) for 256 MiB and 1 GiB guests at
//      0 %, 1 % and 10 % of pages dirty, beside a plain memcpy of the same bytes.
// Target (issue: foundation): harvest + copy <= 2 x memcpy + 50 us.
// Usage: machine_bench   (COLOD_BENCH_QUICK=1: 256 MiB only, fewer repetitions)
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/log.h"
#include "core/page_capture.h"
#include "tests/support/kvstore_guest.h"

using namespace colod;
using namespace colod::test;
using Clock = std::chrono::steady_clock;

namespace {

double us_since(Clock::time_point start) {
    return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

double percentile(std::vector<double> v, double p) {
    std::sort(v.begin(), v.end());
    size_t index = std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * static_cast<double>(v.size())));
    return v[index];
}

double median(std::vector<double> v) { return percentile(std::move(v), 50); }

// Baseline: one thread wakes another through a condition variable and waits for the answer.
std::vector<double> wakeup_round_trips(int count) {
    std::mutex m;
    std::condition_variable cv;
    int request = 0, answer = 0;
    bool stop = false;
    std::thread worker([&] {
        std::unique_lock lock(m);
        for (;;) {
            cv.wait(lock, [&] { return request != answer || stop; });
            if (stop)
                return;
            answer = request;
            cv.notify_all();
        }
    });
    std::vector<double> samples;
    for (int i = 0; i < count; ++i) {
        auto start = Clock::now();
        std::unique_lock lock(m);
        ++request;
        cv.notify_all();
        cv.wait(lock, [&] { return answer == request; });
        samples.push_back(us_since(start));
    }
    {
        std::lock_guard lock(m);
        stop = true;
    }
    cv.notify_all();
    worker.join();
    return samples;
}

void bench_pause(int cycles) {
    auto guest = KvstoreGuest::boot(256ull << 20);
    auto c = guest.client();
    REQUIRE(c.command("CHURN 10") == "OK");
    std::vector<double> samples;
    for (int i = 0; i < cycles; ++i) {
        auto start = Clock::now();
        {
            auto paused = guest.machine().pause();
            samples.push_back(us_since(start));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    auto baseline = wakeup_round_trips(cycles);
    fmt::print("pause until every vCPU is out of KVM_RUN ({} backend, guest under CHURN 10), {} cycles:\n",
               guest.machine().backend_name(), cycles);
    fmt::print("  {:<28} {:>10} {:>10} {:>10}\n", "", "p50 us", "p99 us", "max us");
    fmt::print("  {:<28} {:>10.1f} {:>10.1f} {:>10.1f}\n", "pause", percentile(samples, 50), percentile(samples, 99),
               percentile(samples, 100));
    fmt::print("  {:<28} {:>10.1f} {:>10.1f} {:>10.1f}\n", "baseline: thread wake-up", percentile(baseline, 50),
               percentile(baseline, 99), percentile(baseline, 100));
    fmt::print("  ratio p50 pause / baseline: {:.1f}\n\n", percentile(samples, 50) / percentile(baseline, 50));
}

void bench_harvest(uint64_t memory_bytes, int repetitions) {
    auto guest = KvstoreGuest::boot(memory_bytes);
    auto c = guest.client();
    core::Machine& machine = guest.machine();
    core::GuestMemory& memory = machine.memory();
    core::DirtyBitmap bits(memory.page_count());
    core::PageCapture capture;
    // The baseline copies the same number of bytes between two ordinary, already-touched buffers.
    std::vector<std::byte> plain_src, plain_dst;

    fmt::print("harvest + capture, {} MiB guest ({} pages), median of {}:\n", memory_bytes >> 20, memory.page_count(),
               repetitions);
    fmt::print("  {:>6} {:>8} {:>12} {:>12} {:>12} {:>12} {:>8} {:>8}\n", "dirty", "pages", "harvest us", "copy us",
               "memcpy us", "target us", "ratio", "met");
    for (int percent : {0, 1, 10}) {
        uint64_t want = memory.page_count() * static_cast<uint64_t>(percent) / 100;
        want = std::min(want, guest.scratch_pages());
        std::vector<double> harvest_us, copy_us, memcpy_us;
        uint64_t pages = 0;
        for (int r = 0; r < repetitions; ++r) {
            {
                auto paused = machine.pause();
                bits.clear();
                REQUIRE(memory.harvest_dirty(machine.vm(), bits));  // start clean
            }
            if (want)
                REQUIRE(c.command(fmt::format("DIRTY {}", want)) == fmt::format("OK {}", want));
            auto paused = machine.pause();
            bits.clear();
            auto start = Clock::now();
            REQUIRE(memory.harvest_dirty(machine.vm(), bits));
            harvest_us.push_back(us_since(start));
            start = Clock::now();
            capture.capture(memory, bits);
            copy_us.push_back(us_since(start));
            pages = capture.size();
            if (plain_src.size() < pages * core::k_page_size) {
                plain_src.assign(pages * core::k_page_size, std::byte{1});
                plain_dst.assign(pages * core::k_page_size, std::byte{2});
            }
            start = Clock::now();
            std::memcpy(plain_dst.data(), plain_src.data(), pages * core::k_page_size);
            memcpy_us.push_back(us_since(start));
        }
        double h = median(harvest_us), cp = median(copy_us), mc = median(memcpy_us);
        double target = 2 * mc + 50;
        fmt::print("  {:>5}% {:>8} {:>12.1f} {:>12.1f} {:>12.1f} {:>12.1f} {:>8.2f} {:>8}\n", percent, pages, h, cp, mc,
                   target, (h + cp) / std::max(mc, 0.001), h + cp <= target ? "yes" : "NO");
    }
    fmt::print("  (ratio = (harvest + copy) / memcpy of the same bytes; target = 2 x memcpy + 50 us)\n\n");
}

}  // namespace

// A Catch2 executable (so the guest helpers' checks work), not registered with CTest.
TEST_CASE("machine benchmark") {
    const char* quick_env = std::getenv("COLOD_BENCH_QUICK");
    bool quick = quick_env && *quick_env == '1';
    base::set_log_level(base::Level::Warning);
    bench_pause(1000);
    bench_harvest(256ull << 20, quick ? 3 : 7);
    if (!quick)
        bench_harvest(1ull << 30, 5);
}
