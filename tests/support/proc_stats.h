// SPDX-License-Identifier: GPL-2.0-or-later
// What /proc says about a daemon: resident memory (now and its high-water mark) and open file
// descriptors, for the reliability suite's "memory stays bounded" and "nothing leaks" checks.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <fmt/format.h>

namespace colod::test {

struct ProcMemory {
    uint64_t rss_kib = 0;  // VmRSS
    uint64_t hwm_kib = 0;  // VmHWM: the most the process has ever had resident
};

// Nullopt once the process is gone.
inline std::optional<ProcMemory> proc_memory(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    if (!in)
        return std::nullopt;
    ProcMemory memory;
    bool seen = false;
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0)
            memory.rss_kib = std::stoull(line.substr(6)), seen = true;
        else if (line.rfind("VmHWM:", 0) == 0)
            memory.hwm_kib = std::stoull(line.substr(6)), seen = true;
    }
    if (!seen)
        return std::nullopt;  // a zombie has no memory lines
    return memory;
}

inline std::optional<size_t> open_fds(pid_t pid) {
    std::error_code ec;
    size_t count = 0;
    for (std::filesystem::directory_iterator it(fmt::format("/proc/{}/fd", pid), ec), end; !ec && it != end;
         it.increment(ec))
        ++count;
    if (ec)
        return std::nullopt;
    return count;
}

// Keeps the largest VmHWM seen over any number of samples of any number of processes.
class PeakMemory {
public:
    void sample(pid_t pid) {
        if (auto m = proc_memory(pid); m && m->hwm_kib > m_peak_kib)
            m_peak_kib = m->hwm_kib;
    }
    uint64_t peak_kib() const { return m_peak_kib; }

private:
    uint64_t m_peak_kib = 0;
};

}  // namespace colod::test
