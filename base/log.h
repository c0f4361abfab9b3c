// SPDX-License-Identifier: GPL-2.0-or-later
// Structured logging. Every record carries a level, an event name from a closed list (see
// docs/events.md once it exists) and free-form fields. The daemons install a journald sink;
// everything else (tests, tools) gets human-readable lines on stderr.
#pragma once

#include <chrono>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "base/events.h"

namespace colod::base {

enum class Level { Debug, Info, Notice, Warning, Error };

struct LogField {
    std::string key;  // upper-case journald field name without the COLOD_ prefix, e.g. "SEQ"
    std::string value;
};

struct LogRecord {
    Level level;
    std::string_view event;  // e.g. "started", "peer-lost"; empty for plain messages
    std::string message;
    std::vector<LogField> fields;
};

using LogSink = std::function<void(const LogRecord&)>;

// Replaces the process-wide sink. Not thread-safe against concurrent logging: call at start-up.
void set_log_sink(LogSink sink);
// Records below this level are dropped before formatting reaches the sink.
void set_log_level(Level level);
Level log_level();
// The default sink: "LEVEL event: message KEY=value ..." on stderr.
void stderr_sink(const LogRecord& record);

// `event` comes from the closed list in base/events.h (Event::None for a plain message).
void log(Level level, Event event, std::string message, std::vector<LogField> fields = {});

// Like log(), but a record with the same `key` is written at most once per `interval`; the
// next one that goes out says how many were suppressed. For warnings that a misbehaving peer
// could otherwise repeat many times a second.
void log_limited(std::string_view key, std::chrono::milliseconds interval, Level level, Event event,
                 std::string message, std::vector<LogField> fields = {});

template <typename... Args>
void logf(Level level, Event event, fmt::format_string<Args...> format, Args&&... args) {
    if (level < log_level())
        return;
    log(level, event, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace colod::base
