// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/io_bus.h"

#include <algorithm>

#include "base/log.h"
#include "core/device.h"

namespace colod::core {

base::Result<void> IoBus::add(std::vector<Range>& ranges, uint64_t first, uint64_t size, Device& device) {
    for (const auto& range : ranges) {
        if (first < range.first + range.size && range.first < first + size)
            return base::Error::make(base::Errc::Invalid, "{} at {:#x}+{:#x} overlaps {}", device.name(), first, size,
                                     range.device->name());
    }
    ranges.push_back(Range{first, size, &device});
    std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) { return a.first < b.first; });
    return base::ok();
}

base::Result<void> IoBus::add_ports(uint16_t first, uint16_t count, Device& device) {
    return add(m_ports, first, count, device);
}

base::Result<void> IoBus::add_mmio(uint64_t first, uint64_t size, Device& device) {
    return add(m_mmio, first, size, device);
}

Device* IoBus::find(const std::vector<Range>& ranges, uint64_t addr, uint64_t len) {
    for (const auto& range : ranges) {
        if (addr >= range.first && addr - range.first + len <= range.size)
            return range.device;
    }
    return nullptr;
}

void IoBus::pio(uint16_t port, std::span<std::byte> data, bool is_write) {
    Device* device = find(m_ports, port, data.size());
    if (!device) {
        if (++m_unclaimed == 1 || (m_unclaimed & (m_unclaimed - 1)) == 0)  // log at 1, 2, 4, 8 ...
            base::logf(base::Level::Debug, base::Event::None, "guest {} unclaimed port {:#x} ({} so far)", is_write ? "wrote" : "read",
                       port, m_unclaimed);
        if (!is_write)
            std::fill(data.begin(), data.end(), std::byte{0xff});
        return;
    }
    if (is_write)
        device->pio_write(port, data);
    else
        device->pio_read(port, data);
}

void IoBus::mmio(uint64_t addr, std::span<std::byte> data, bool is_write) {
    Device* device = find(m_mmio, addr, data.size());
    if (!device) {
        if (++m_unclaimed == 1 || (m_unclaimed & (m_unclaimed - 1)) == 0)
            base::logf(base::Level::Debug, base::Event::None, "guest {} unclaimed MMIO {:#x} ({} so far)", is_write ? "wrote" : "read",
                       addr, m_unclaimed);
        if (!is_write)
            std::fill(data.begin(), data.end(), std::byte{0xff});
        return;
    }
    if (is_write)
        device->mmio_write(addr, data);
    else
        device->mmio_read(addr, data);
}

}  // namespace colod::core
