// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/fault.h"

#ifdef COLOD_FAULT_POINTS

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "base/log.h"

namespace colod::core {

namespace {

struct Armed {
    std::string name;
    std::string action;
    long stall_ms = 0;
    int fire_at = 1;
    int hits = 0;
    bool fired = false;
};

std::vector<Armed> parse(const char* spec) {
    std::vector<Armed> out;
    std::string all(spec ? spec : "");
    size_t pos = 0;
    while (pos < all.size()) {
        size_t end = all.find(',', pos);
        std::string item = all.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
        pos = end == std::string::npos ? all.size() : end + 1;
        size_t colon = item.find(':');
        if (colon == std::string::npos)
            continue;
        Armed armed;
        armed.name = item.substr(0, colon);
        std::string action = item.substr(colon + 1);
        if (size_t at = action.find('@'); at != std::string::npos) {
            armed.fire_at = std::max(1, std::atoi(action.c_str() + at + 1));
            action.resize(at);
        }
        if (action.rfind("stall=", 0) == 0) {
            armed.stall_ms = std::atol(action.c_str() + 6);
            action = "stall";
        }
        armed.action = action;
        out.push_back(std::move(armed));
    }
    return out;
}

}  // namespace

bool fault_point(std::string_view name) {
    static std::mutex mutex;
    static std::vector<Armed> armed = parse(std::getenv("COLOD_FAULT"));
    long stall = 0;
    bool hit = false;
    {
        std::lock_guard lock(mutex);
        for (auto& a : armed) {
            if (a.fired || a.name != name || ++a.hits < a.fire_at)
                continue;
            a.fired = true;
            base::logf(base::Level::Warning, base::Event::None, "fault point {} fires: {}", name, a.action);
            if (a.action == "kill")
                ::kill(::getpid(), SIGKILL);
            if (a.action == "stall")
                stall = a.stall_ms;
            if (a.action == "hit")
                hit = true;
        }
    }
    if (stall)
        std::this_thread::sleep_for(std::chrono::milliseconds(stall));
    return hit;
}

base::LogSink fault_log_sink(base::LogSink sink) {
    for (const auto& a : parse(std::getenv("COLOD_FAULT"))) {
        if (a.name != "log.write" || a.action != "stall" || a.stall_ms <= 0)
            continue;
        auto records = std::make_shared<std::atomic<int>>(0);
        sink(base::LogRecord{base::Level::Warning, "",
                             fmt::format("fault point log.write armed: from record {} on, every record waits {} ms",
                                         a.fire_at, a.stall_ms),
                             {}});
        return [sink = std::move(sink), records, ms = a.stall_ms, from = a.fire_at](const base::LogRecord& record) {
            if (++*records >= from)
                std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            sink(record);
        };
    }
    return sink;
}

}  // namespace colod::core

#endif
