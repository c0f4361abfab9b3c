// SPDX-License-Identifier: GPL-2.0-or-later
// Child processes for integration tests: spawn with pipes, read stdout lines with deadlines,
// signal, wait. Every child is killed when its Process object goes, so a failing test never
// leaves daemons behind.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/support/backend.h"

extern char** environ;

namespace colod::test {

class Process {
public:
    // Starts `argv[0]` with `argv`; stdout is a pipe the test reads, stderr goes to
    // `stderr_path` (appended) or is inherited when empty. `env` entries ("K=V") are added.
    static std::optional<Process> spawn(const std::vector<std::string>& argv, const std::string& stderr_path = {},
                                        const std::vector<std::string>& env = {}) {
        int out[2], in[2];
        if (::pipe2(out, O_CLOEXEC) < 0 || ::pipe2(in, O_CLOEXEC) < 0)
            return std::nullopt;
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        if (!stderr_path.empty())
            posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        // Children start with no blocked signals (the test may block some) and their own
        // process group, so kill_group() reaches anything they start.
        sigset_t none;
        sigemptyset(&none);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
        std::vector<char*> args;
        for (const auto& arg : argv)
            args.push_back(const_cast<char*>(arg.c_str()));
        args.push_back(nullptr);
        std::vector<std::string> env_strings;
        for (char** e = environ; *e; ++e)
            env_strings.emplace_back(*e);
        env_strings.insert(env_strings.end(), env.begin(), env.end());
        std::vector<char*> envp;
        for (auto& e : env_strings)
            envp.push_back(e.data());
        envp.push_back(nullptr);
        pid_t pid = 0;
        int rc = posix_spawn(&pid, args[0], &actions, &attr, args.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        ::close(out[1]);
        ::close(in[0]);
        if (rc != 0) {
            ::close(out[0]);
            ::close(in[1]);
            return std::nullopt;
        }
        return Process(pid, out[0], in[1]);
    }

    Process(Process&& other) noexcept
        : m_pid(std::exchange(other.m_pid, -1)),
          m_out(std::exchange(other.m_out, -1)),
          m_in(std::exchange(other.m_in, -1)),
          m_buffer(std::move(other.m_buffer)),
          m_status(other.m_status) {}
    Process& operator=(Process&&) = delete;
    ~Process() {
        if (m_pid > 0 && !m_status) {
            ::kill(-m_pid, SIGKILL);
            ::kill(m_pid, SIGKILL);
            wait(std::chrono::seconds(10));
        }
        if (m_out >= 0)
            ::close(m_out);
        if (m_in >= 0)
            ::close(m_in);
    }

    pid_t pid() const { return m_pid; }

    // The next stdout line, or nullopt at EOF or timeout.
    std::optional<std::string> line(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        return line_until(std::chrono::steady_clock::now() + scaled(timeout));
    }

    // The next stdout line, or nullopt at EOF or once `deadline` has passed.
    std::optional<std::string> line_until(std::chrono::steady_clock::time_point deadline) {
        for (;;) {
            if (auto nl = m_buffer.find('\n'); nl != std::string::npos) {
                std::string out = m_buffer.substr(0, nl);
                m_buffer.erase(0, nl + 1);
                return out;
            }
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return std::nullopt;
            pollfd p{m_out, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
                continue;
            char buffer[4096];
            ssize_t n = ::read(m_out, buffer, sizeof(buffer));
            if (n <= 0)
                return std::nullopt;
            m_buffer.append(buffer, static_cast<size_t>(n));
        }
    }

    // Reads lines until one starts with `prefix`; returns it.
    std::optional<std::string> line_starting(std::string_view prefix,
                                             std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        while (auto l = line_until(deadline)) {
            if (l->rfind(prefix, 0) == 0)
                return l;
        }
        return std::nullopt;
    }

    bool write(std::string_view data) {
        while (!data.empty()) {
            ssize_t n = ::write(m_in, data.data(), data.size());
            if (n <= 0)
                return false;
            data.remove_prefix(static_cast<size_t>(n));
        }
        return true;
    }

    void signal(int sig) {
        if (m_pid > 0 && !m_status)
            ::kill(m_pid, sig);
    }

    // The exit status (as from waitpid) once the child has ended, nullopt on timeout.
    std::optional<int> wait(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        if (m_status)
            return m_status;
        auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
        for (;;) {
            int status = 0;
            pid_t r = ::waitpid(m_pid, &status, WNOHANG);
            if (r == m_pid) {
                m_status = status;
                return m_status;
            }
            if (std::chrono::steady_clock::now() >= deadline)
                return std::nullopt;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

    // Exit code for a normal exit, 128+signal for a signal death, -1 if still running.
    int exit_code(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
        auto status = wait(timeout);
        if (!status)
            return -1;
        if (WIFEXITED(*status))
            return WEXITSTATUS(*status);
        return 128 + WTERMSIG(*status);
    }

private:
    Process(pid_t pid, int out, int in) : m_pid(pid), m_out(out), m_in(in) {}
    pid_t m_pid;
    int m_out;
    int m_in;
    std::string m_buffer;
    std::optional<int> m_status;
};

// Runs `command` through /bin/sh: its exit status (-1 if it did not exit normally or could not
// start) and what it wrote on stdout.
inline std::pair<int, std::string> run_shell(const std::string& command) {
    std::string out;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (!pipe)
        return {-1, out};
    char buffer[4096];
    while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe))
        out.append(buffer, n);
    int status = ::pclose(pipe);
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

}  // namespace colod::test

