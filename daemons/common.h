// SPDX-License-Identifier: GPL-2.0-or-later
// What the three commands share: logging to journald or stderr, sd_notify, signals, images.
#pragma once

#include <csignal>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "config/config.h"

namespace colod::daemons {

// "colod-primary 0.1.0 (colod protocol 1)".
std::string version_line(std::string_view program);

// Sends log records to journald with structured fields when stderr is connected to the journal
// (systemd's JOURNAL_STREAM), else as lines on stderr. Every record carries COLOD_VM and
// COLOD_ROLE.
void setup_logging(std::string_view vm, std::string_view role);

// sd_notify, a no-op outside systemd. `state` is e.g. "READY=1\nSTATUS=protected".
void notify(const std::string& state);
// The watchdog interval systemd asks for (0 when none): ping at least twice per interval.
uint64_t watchdog_usec();

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and every thread it starts later;
// wait_for_signal() then returns the next one (SIGHUP asks for a reload of the keys, the others
// for a stop). Call first thing in main().
void block_termination_signals();
int wait_for_signal();
// Waits for a termination signal with a timeout; returns 0 on timeout.
int wait_for_signal(uint64_t timeout_ms);

// The bytes of the guest the config names: an embedded image, an ELF64 file (at most 1 GiB), or
// a Linux kernel and its initrd (read into one buffer, kernel first).
struct GuestImage {
    std::string name;  // builtin:kvstore, the image's path, or the kernel's
    std::vector<std::byte> owned;
    std::span<const std::byte> bytes;   // everything: what HELLO's image hash covers
    std::span<const std::byte> kernel;  // Linux guests: the bzImage
    std::span<const std::byte> initrd;  // Linux guests: the initrd (may be empty)
    bool is_linux() const { return !kernel.empty(); }
};
base::Result<GuestImage> load_image(const config::VmConfig& vm);

}  // namespace colod::daemons

namespace colod::daemons {
// The KVM backend for `accelerator` (config [vm] accelerator): "kvm" and "soft" as they are;
// "auto" picks kvm when /dev/kvm exists, else soft with a warning in the log. A Linux guest runs
// on KVM only: for one, "auto" without /dev/kvm is an error saying so.
base::Result<std::string> choose_backend(const config::VmConfig& vm);
}  // namespace colod::daemons
