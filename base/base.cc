// SPDX-License-Identifier: GPL-2.0-or-later
#include "base/log.h"
#include "base/result.h"

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

namespace colod::base {

std::string_view errc_name(Errc code) {
    switch (code) {
    case Errc::Failed: return "failed";
    case Errc::System: return "system";
    case Errc::Eof: return "eof";
    case Errc::Timeout: return "timeout";
    case Errc::Protocol: return "protocol";
    case Errc::Auth: return "auth";
    case Errc::Invalid: return "invalid";
    case Errc::Unsupported: return "unsupported";
    case Errc::Mismatch: return "mismatch";
    case Errc::Stopped: return "stopped";
    }
    return "unknown";
}

namespace {
LogSink g_sink = stderr_sink;
Level g_level = Level::Info;
std::mutex g_stderr_mutex;

std::string_view level_name(Level level) {
    switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Notice: return "notice";
    case Level::Warning: return "warning";
    case Level::Error: return "error";
    }
    return "?";
}
}  // namespace

void set_log_sink(LogSink sink) { g_sink = sink ? std::move(sink) : LogSink(stderr_sink); }
void set_log_level(Level level) { g_level = level; }
Level log_level() { return g_level; }

void stderr_sink(const LogRecord& record) {
    std::string line = fmt::format("{}", level_name(record.level));
    if (!record.event.empty())
        line += fmt::format(" [{}]", record.event);
    line += ": ";
    line += record.message;
    for (const auto& field : record.fields)
        line += fmt::format(" {}={}", field.key, field.value);
    line += '\n';
    std::lock_guard lock(g_stderr_mutex);
    std::fputs(line.c_str(), stderr);
}

void log(Level level, Event event, std::string message, std::vector<LogField> fields) {
    if (level < g_level)
        return;
    g_sink(LogRecord{level, event_name(event), std::move(message), std::move(fields)});
}

void log_limited(std::string_view key, std::chrono::milliseconds interval, Level level, Event event,
                 std::string message, std::vector<LogField> fields) {
    struct Entry {
        std::chrono::steady_clock::time_point last;
        uint64_t suppressed = 0;
    };
    static std::mutex mutex;
    static std::map<std::string, Entry, std::less<>> entries;
    uint64_t suppressed = 0;
    {
        std::lock_guard lock(mutex);
        auto now = std::chrono::steady_clock::now();
        if (entries.size() > 1024)
            entries.clear();  // bounded: a flood of distinct keys only loses the counts
        auto it = entries.find(key);
        if (it != entries.end() && now - it->second.last < interval) {
            ++it->second.suppressed;
            return;
        }
        if (it == entries.end())
            it = entries.emplace(std::string(key), Entry{}).first;
        suppressed = std::exchange(it->second.suppressed, 0);
        it->second.last = now;
    }
    if (suppressed)
        message += fmt::format(" ({} more like this suppressed)", suppressed);
    log(level, event, std::move(message), std::move(fields));
}

}  // namespace colod::base
