// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace colod::core {

// A device's saved state: a name that identifies the device in the machine, a version of its
// layout, and the bytes (fixed-width fields, big-endian, written with StateWriter).
struct DeviceState {
    std::string name;
    uint16_t version = 0;
    std::vector<std::byte> bytes;
};

// One emulated device on the port I/O and/or MMIO bus. Handlers run on vCPU threads; a device
// that also has other threads (the console feeding the UART) synchronises internally.
class Device {
public:
    virtual ~Device() = default;
    virtual std::string_view name() const = 0;
    // The layout version save_state() writes (HELLO lists it so both sides agree).
    virtual uint16_t state_version() const = 0;

    // Port access of `data.size()` bytes (1, 2 or 4) at `port`, which lies in a range the device
    // registered. Reads fill `data`.
    virtual void pio_read(uint16_t /*port*/, std::span<std::byte> data) { std::fill(data.begin(), data.end(), std::byte{0xff}); }
    virtual void pio_write(uint16_t port, std::span<const std::byte> data) { (void)port, (void)data; }
    virtual void mmio_read(uint64_t /*addr*/, std::span<std::byte> data) { std::fill(data.begin(), data.end(), std::byte{0xff}); }
    virtual void mmio_write(uint64_t addr, std::span<const std::byte> data) { (void)addr, (void)data; }

    // Capture while the machine is paused. Must describe everything the guest can observe.
    virtual DeviceState save_state() const = 0;
    // Validates `state` without changing anything: the machine checks every device's state
    // before it loads any, so a load is never partial.
    virtual base::Result<void> check_state(const DeviceState& state) const = 0;
    // Validates `state` completely before changing anything; loads in place (a secondary loads
    // state again and again into the same paused machine).
    virtual base::Result<void> load_state(const DeviceState& state) = 0;
};

}  // namespace colod::core
