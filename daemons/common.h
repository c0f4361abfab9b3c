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
// wait_for_signal() then returns the next one. Call first thing in main().
void block_termination_signals();
int wait_for_signal();
// Waits for a termination signal with a timeout; returns 0 on timeout.
int wait_for_signal(uint64_t timeout_ms);

// The bytes of the guest image the config names: an embedded one or a file (at most 1 GiB).
struct GuestImage {
    std::string name;  // builtin:kvstore or the path
    std::vector<std::byte> owned;
    std::span<const std::byte> bytes;
};
base::Result<GuestImage> load_image(const config::Image& image);

}  // namespace colod::daemons

namespace colod::daemons {
// The KVM backend for `accelerator` (config [vm] accelerator): "kvm" and "soft" as they are;
// "auto" picks kvm when /dev/kvm exists, else soft with a warning in the log.
std::string choose_backend(std::string_view accelerator);
}  // namespace colod::daemons
