// SPDX-License-Identifier: GPL-2.0-or-later
#include "daemons/watch.h"

#include <errno.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

#include "config/units.h"
#include "daemons/control.h"
#include "daemons/watch_json.h"
#include "daemons/watch_view.h"

namespace colod::daemons {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int k_request_timeout_ms = 10'000;

bool plain_decimal(std::string_view text) {
    size_t digits = 0, dots = 0;
    for (char c : text) {
        if (c >= '0' && c <= '9')
            ++digits;
        else if (c == '.')
            ++dots;
        else
            return false;
    }
    return digits > 0 && dots <= 1;
}

size_t terminal_columns() {
    winsize size{};
    if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0)
        return size.ws_col;
    return 0;
}

// The watch's output: frames for a terminal, or blocks for anything else.
class WatchOutput {
public:
    explicit WatchOutput(bool terminal) : m_terminal(terminal) {}

    // Writes one refresh; false when standard output no longer takes it.
    bool show(const std::string& block) {
        m_last_block = block;
        if (!m_terminal)
            return write(block + "\n");
        bool ok = write(watch_terminal_frame(block, terminal_columns(), m_next));
        m_next = Refresh::Next;
        return ok;
    }
    // Before the process stops (Ctrl-Z) and after it continues.
    void suspend() {
        if (m_terminal)
            static_cast<void>(write(std::string(k_watch_terminal_end)));
    }
    void resume() {
        if (!m_terminal)
            return;
        m_next = Refresh::First;
        if (!m_last_block.empty())
            static_cast<void>(show(m_last_block));
    }
    // Leaves the terminal as the watch found it (the view stays on the screen).
    void end() {
        if (m_terminal && !m_ended)
            static_cast<void>(write(std::string(k_watch_terminal_end)));
        m_ended = true;
    }

private:
    static bool write(const std::string& text) {
        std::cout << text << std::flush;
        return static_cast<bool>(std::cout);
    }

    bool m_terminal;
    bool m_ended = false;
    Refresh m_next = Refresh::First;
    std::string m_last_block;
};

// The signals a watch takes through sigtimedwait, blocked while it runs; the old mask comes
// back when it ends.
class BlockedSignals {
public:
    BlockedSignals() {
        sigemptyset(&m_set);
        for (int sig : {SIGINT, SIGTERM, SIGTSTP})
            sigaddset(&m_set, sig);
        pthread_sigmask(SIG_BLOCK, &m_set, &m_old);
    }
    ~BlockedSignals() {
        // Drop a signal that came too late to matter, so that unblocking it does not end (or
        // stop) the process on its way out.
        timespec now{};
        while (sigtimedwait(&m_set, nullptr, &now) > 0) {
        }
        pthread_sigmask(SIG_SETMASK, &m_old, nullptr);
    }
    BlockedSignals(const BlockedSignals&) = delete;
    BlockedSignals& operator=(const BlockedSignals&) = delete;

    // The signal that came before `deadline`, or 0 once it has passed.
    int wait_until(Clock::time_point deadline) const {
        for (;;) {
            auto left = deadline - Clock::now();
            if (left <= Clock::duration::zero())
                return 0;
            auto seconds = std::chrono::duration_cast<std::chrono::seconds>(left);
            timespec timeout{static_cast<time_t>(seconds.count()),
                             static_cast<long>(std::chrono::nanoseconds(left - seconds).count())};
            int sig = sigtimedwait(&m_set, nullptr, &timeout);
            if (sig > 0)
                return sig;
            if (errno != EINTR && errno != EAGAIN)
                return 0;
        }
    }

private:
    sigset_t m_set;
    sigset_t m_old;
};

}  // namespace

base::Result<std::chrono::microseconds> parse_watch_interval(std::string_view text) {
    if (!text.empty() && text.front() == '-')
        return base::Error(base::Errc::Invalid, "must be more than 0");
    std::chrono::microseconds interval{0};
    if (plain_decimal(text)) {
        // A bare number counts seconds, as watch(1)'s -n does.
        double seconds = std::strtod(std::string(text).c_str(), nullptr);
        if (seconds > std::chrono::duration<double>(k_watch_max_interval).count())
            return base::Error(base::Errc::Invalid, "must be at most " + config::format_duration(k_watch_max_interval));
        interval = std::chrono::microseconds(std::llround(seconds * 1e6));
    } else {
        auto parsed = config::parse_duration(text);
        if (!parsed)
            return base::Error(base::Errc::Invalid,
                               "not a number of seconds (2, 0.5) nor a duration with its unit (500ms, 2s)");
        interval = *parsed;
    }
    if (interval.count() == 0)
        return base::Error(base::Errc::Invalid, "must be more than 0");
    if (interval < k_watch_min_interval)
        return base::Error(base::Errc::Invalid, "must be at least " + config::format_duration(k_watch_min_interval));
    if (interval > k_watch_max_interval)
        return base::Error(base::Errc::Invalid, "must be at most " + config::format_duration(k_watch_max_interval));
    return interval;
}

WatchEnd watch_status(const std::filesystem::path& control, std::string_view role,
                      std::chrono::microseconds interval) {
    BlockedSignals signals;
    WatchOutput output(::isatty(STDOUT_FILENO) == 1);
    std::optional<core::Status> before;
    Clock::time_point before_at;
    for (;;) {
        auto reply = control_request(control, "status --json", k_request_timeout_ms);
        auto at = Clock::now();
        if (!reply) {
            output.end();
            if (before)
                std::cerr << "coloctl: the " << role << " daemon went away: " << reply.error().message() << "\n";
            else
                std::cerr << "coloctl: cannot reach the " << role << " daemon at " << control.string() << ": "
                          << reply.error().message() << "\n";
            return WatchEnd::Unreachable;
        }
        if (!reply->ok) {
            output.end();
            std::cerr << "coloctl: " << reply->body << "\n";
            return WatchEnd::Failed;
        }
        auto status = status_from_json(reply->body);
        if (!status) {
            output.end();
            std::cerr << "coloctl: " << status.error().message() << "\n";
            return WatchEnd::Failed;
        }
        if (!output.show(watch_view(before, *status, at - before_at))) {
            output.end();
            std::cerr << "coloctl: cannot write to standard output\n";
            return WatchEnd::Failed;
        }
        before = std::move(status).value();
        before_at = at;
        // The next request `interval` after this one's answer, unless a signal comes first.
        auto next = at + interval;
        for (;;) {
            int sig = signals.wait_until(next);
            if (sig == 0)
                break;
            if (sig == SIGTSTP) {
                output.suspend();
                ::kill(::getpid(), SIGSTOP);
                output.resume();
                continue;
            }
            output.end();
            return WatchEnd::Interrupted;
        }
    }
}

}  // namespace colod::daemons
