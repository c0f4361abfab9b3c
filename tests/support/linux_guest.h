// SPDX-License-Identifier: GPL-2.0-or-later
// The Linux test guest (guests/linux/: Debian's kernel, kvstored on ttyS0) for tests and
// benchmarks: its pair options, and a console that waits for kvstored.
#pragma once

#include <catch2/catch.hpp>

#include <filesystem>
#include <random>
#include <regex>
#include <string>

#include <fmt/format.h>

#include "tests/support/pair.h"

namespace colod::test {

// COLOD_LINUX_GUEST_DIR (vmlinuz, initrd.cpio.gz), else the build tree's (colod_linux_guest).
inline std::filesystem::path linux_guest_dir() {
    const char* env = std::getenv("COLOD_LINUX_GUEST_DIR");
    return env && *env ? std::filesystem::path(env) : std::filesystem::path(COLOD_LINUX_GUEST_DEFAULT_DIR);
}

// A Linux guest's pair options. loglevel=5: the kernel's warnings and worse reach ttyS0 beside
// the protocol, so a test sees any soft lockup, RCU stall, hung task or clocksource message.
// Nested in QEMU's TCG (COLOD_NESTED_TCG, set by tests/hostkvm/nested.sh) the host's TSC is not
// reliable and the kernel's clocksource watchdog would say so at every boot: that is the
// platform, not colod, and tsc=reliable keeps it quiet there (docs/linux-guests.md).
inline PairOptions linux_options(int vcpus, std::string memory = "256M") {
    PairOptions options;
    options.memory = std::move(memory);
    options.vcpus = vcpus;
    const char* nested = std::getenv("COLOD_NESTED_TCG");
    options.guest = fmt::format("kernel = {}\ninitrd = {}\ncmdline = console=ttyS0 loglevel=5{}\n",
                                (linux_guest_dir() / "vmlinuz").string(),
                                (linux_guest_dir() / "initrd.cpio.gz").string(),
                                nested && *nested == '1' ? " tsc=reliable" : "");
    // A Linux guest under nested KVM answers slowly: the heartbeat must not mistake that for death.
    options.heartbeat_interval = "50ms";
    options.heartbeat_timeout = "1000ms";
    options.checkpoint_interval = "100ms";
    return options;
}

// A line the guest's kernel printed on ttyS0 ("[   24.295185] hrtimer: ..."): it can come
// between a command and its reply (kvstored's replies never start with '[').
inline bool kernel_message(std::string_view line) {
    static const std::regex k_printk(R"(^\[ *[0-9]+\.[0-9]+\] .*)");
    return std::regex_match(line.begin(), line.end(), k_printk);
}

// Until kvstored answers: PING until PONG (the tty echoes input until kvstored takes it over),
// then a unique SET and GET so that every reply the early PINGs caused has been read.
inline bool wait_kvstored(LineClient& client, std::chrono::milliseconds timeout, std::string* seen = nullptr) {
    auto deadline = std::chrono::steady_clock::now() + scaled(timeout);
    auto next = [&](std::chrono::milliseconds wait) {
        auto line = client.line(wait);
        if (line && seen)
            *seen += *line + "\n";
        return line;
    };
    bool pong = false;
    while (!pong && std::chrono::steady_clock::now() < deadline && !client.ended()) {
        if (!client.send("PING\n"))
            return false;
        auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        while (!pong && std::chrono::steady_clock::now() < until)
            if (auto l = next(std::chrono::seconds(1)); l && *l == "PONG")
                pong = true;
    }
    if (!pong)
        return false;
    std::string token = fmt::format("t{}", std::random_device{}());
    if (!client.send("SET boot-sync " + token + "\nGET boot-sync\n"))
        return false;
    while (auto l = next(std::chrono::seconds(30)))
        if (*l == token)
            return true;
    return false;
}

}  // namespace colod::test
