// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/board.h"

#include <algorithm>

#include "base/log.h"
#include "core/platform.h"
#include "core/power.h"
#include "core/uart.h"

namespace colod::core {

std::function<void(bool)> DeviceContext::irq(uint32_t line) {
    kvm::Vm* vm = &m_vm;
    return [vm, line](bool level) {
        if (auto result = vm->irq_line(line, level); !result)
            base::logf(base::Level::Error, base::Event::Error, "interrupt line {}: {}", line, result.error().message());
    };
}

base::Result<void> DeviceContext::connect(uint64_t addr, uint32_t value, int fd) {
    return m_vm.assign_ioeventfd(addr, 4, value, fd);
}

void DeviceContext::disconnect(uint64_t addr, uint32_t value, int fd) {
    if (auto removed = m_vm.deassign_ioeventfd(addr, 4, value, fd); !removed)
        base::logf(base::Level::Warning, base::Event::None, "doorbell at {:#x}: {}", addr, removed.error().message());
}

base::Result<uint32_t> Board::claim_irq(std::optional<uint32_t> fixed) {
    auto taken = [&](uint32_t line) { return std::find(m_irqs.begin(), m_irqs.end(), line) != m_irqs.end(); };
    if (fixed) {
        if (*fixed >= platform::k_ioapic_pins)
            return base::Error::make(base::Errc::Invalid, "interrupt line {}: the IOAPIC has pins 0 to {}", *fixed,
                                     platform::k_ioapic_pins - 1);
        if (taken(*fixed))
            return base::Error::make(base::Errc::Invalid, "interrupt line {} is taken by another device", *fixed);
        m_irqs.push_back(*fixed);
        return *fixed;
    }
    for (uint32_t line : platform::k_device_irqs)
        if (!taken(line)) {
            m_irqs.push_back(line);
            return line;
        }
    return base::Error::make(base::Errc::Unsupported, "no free interrupt line left for another device ({} in use)",
                             m_irqs.size());
}

base::Result<uint64_t> Board::claim_mmio(uint64_t size) {
    constexpr uint64_t k_align = 4096;
    if (size == 0)
        return base::Error(base::Errc::Invalid, "an MMIO window of 0 bytes");
    uint64_t rounded = (size + k_align - 1) & ~(k_align - 1);
    uint64_t first = platform::k_device_mmio_start + m_next_mmio;
    if (rounded > platform::k_device_mmio_end - first)
        return base::Error::make(base::Errc::Unsupported, "no room for an MMIO window of {} bytes", size);
    m_next_mmio += rounded;
    return first;
}

base::Result<uint16_t> Board::claim_ports(uint16_t count) {
    if (count == 0)
        return base::Error(base::Errc::Invalid, "a port range of 0 ports");
    uint32_t first = platform::k_device_ports_start + m_next_ports;
    if (first + count > platform::k_device_ports_end)
        return base::Error::make(base::Errc::Unsupported, "no room for {} more ports", count);
    m_next_ports += count;
    return static_cast<uint16_t>(first);
}

// A failed add may leave some of the device's ranges on the bus: the machine being built is
// then unusable, and its creation fails with this error.
base::Result<Device*> Board::add(std::unique_ptr<Device> device, const Placement& placement) {
    if (m_sealed)
        return base::Error::make(base::Errc::Invalid, "device {}: the machine has started; devices are added before",
                                 device->name());
    for (const auto& existing : m_devices)
        if (existing->name() == device->name())
            return base::Error::make(base::Errc::Invalid, "two devices named {}", device->name());
    if (placement.announce != Announce::None && placement.mmio.empty())
        return base::Error::make(base::Errc::Invalid, "device {}: announced without an MMIO window", device->name());
    for (const auto& [first, count] : placement.ports)
        TRY(m_bus.add_ports(first, count, *device));
    for (const auto& [first, size] : placement.mmio)
        TRY(m_bus.add_mmio(first, size, *device));
    if (auto* pausable = dynamic_cast<Pausable*>(device.get()))
        m_pausable.push_back(pausable);
    if (placement.announce != Announce::None)
        m_announced.push_back({placement.announce, placement.mmio.front().first, placement.mmio.front().second,
                               placement.irq});
    m_devices.push_back(std::move(device));
    return m_devices.back().get();
}

void Board::quiesce() {
    for (auto* device : m_pausable)
        device->quiesce();
}

void Board::resume() {
    for (auto it = m_pausable.rbegin(); it != m_pausable.rend(); ++it)
        (*it)->resume();
}

base::Result<StandardDevices> build_standard_board(Board& board, std::function<void(int)> power_off) {
    StandardDevices standard;
    uint32_t com1_irq = TRY(board.claim_irq(platform::k_irq_com1));
    auto uart = std::make_unique<Uart>(platform::k_port_com1, nullptr, board.context().irq(com1_irq));
    standard.uart = uart.get();
    TRY(board.add(std::move(uart), {{{platform::k_port_com1, Uart::k_port_count}}, {}}));
    TRY(board.add(std::make_unique<PowerPort>(std::move(power_off)), {{{platform::k_port_power, 4}}, {}}));
    return standard;
}

}  // namespace colod::core
