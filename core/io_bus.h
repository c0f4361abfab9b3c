// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

#include "base/result.h"

namespace colod::core {

class Device;

// Dispatch of port I/O and MMIO exits to devices. Ranges are registered at machine set-up and
// never change while vCPUs run, so lookups take no lock.
class IoBus {
public:
    base::Result<void> add_ports(uint16_t first, uint16_t count, Device& device);
    base::Result<void> add_mmio(uint64_t first, uint64_t size, Device& device);

    // Accesses nobody claims read as all ones and are otherwise ignored (what real hardware
    // does for an empty bus); `unclaimed()` counts them so a hostile guest shows up in status.
    void pio(uint16_t port, std::span<std::byte> data, bool is_write);
    void mmio(uint64_t addr, std::span<std::byte> data, bool is_write);

    uint64_t unclaimed() const { return m_unclaimed; }

private:
    struct Range {
        uint64_t first;
        uint64_t size;
        Device* device;
    };
    static Device* find(const std::vector<Range>& ranges, uint64_t addr, uint64_t len);
    static base::Result<void> add(std::vector<Range>& ranges, uint64_t first, uint64_t size, Device& device);

    std::vector<Range> m_ports;
    std::vector<Range> m_mmio;
    std::atomic<uint64_t> m_unclaimed{0};
};

}  // namespace colod::core
