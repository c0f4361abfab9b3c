// SPDX-License-Identifier: GPL-2.0-or-later
// The board of one machine: its device manager. It builds the devices the config asks for,
// gives each its place (ports, an MMIO window, an interrupt line, from core/platform.h's map),
// access to guest memory and to interrupt injection, and stops the work of devices that have
// threads of their own while the machine is paused.
//
// Devices are added before the machine starts; their order is the order of their state
// sections (and of HELLO's device list), so both sides of a pair must build the same board.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/result.h"
#include "core/device.h"
#include "core/guest_memory.h"
#include "core/io_bus.h"
#include "kvm/vm.h"

namespace colod::core {

class Uart;

// A device with threads of its own (a backend reading a tap or a disk image, say). While the
// machine is paused nothing of the device may touch guest memory or its own state: the
// checkpoint reads both. quiesce() returns once its workers are parked; resume() lets them on.
class Pausable {
public:
    virtual ~Pausable() = default;
    virtual void quiesce() = 0;
    virtual void resume() = 0;
};

// Doorbells: a guest's 4-byte write of `value` to the MMIO address `addr` signals the eventfd
// `fd` inside KVM (KVM_IOEVENTFD) instead of stopping the vCPU for colod; other writes there
// still exit. connect() fails where KVM cannot, and the device then takes the writes as exits.
class DoorbellWiring {
public:
    virtual ~DoorbellWiring() = default;
    virtual base::Result<void> connect(uint64_t addr, uint32_t value, int fd) = 0;
    virtual void disconnect(uint64_t addr, uint32_t value, int fd) = 0;
};

// What a device may use of its machine.
class DeviceContext final : public DoorbellWiring {
public:
    DeviceContext(kvm::Vm& vm, GuestMemory& memory) : m_vm(vm), m_memory(memory) {}
    GuestMemory& memory() { return m_memory; }
    // The device's interrupt output, wired to IOAPIC pin `line` (errors are logged: a device
    // cannot do anything better about them).
    std::function<void(bool level)> irq(uint32_t line);
    // Doorbells through the VM's ioeventfds. The context outlives the board's devices.
    DoorbellWiring& doorbells() { return *this; }
    base::Result<void> connect(uint64_t addr, uint32_t value, int fd) override;
    void disconnect(uint64_t addr, uint32_t value, int fd) override;

private:
    kvm::Vm& m_vm;
    GuestMemory& m_memory;
};

class Board {
public:
    Board(kvm::Vm& vm, GuestMemory& memory, IoBus& bus) : m_context(vm, memory), m_bus(bus) {}
    Board(const Board&) = delete;
    Board& operator=(const Board&) = delete;

    DeviceContext& context() { return m_context; }

    // Places. Each is given out once; asking for a place that is taken or outside the map is
    // an error naming it.
    base::Result<uint32_t> claim_irq(std::optional<uint32_t> fixed = std::nullopt);
    base::Result<uint64_t> claim_mmio(uint64_t size);
    base::Result<uint16_t> claim_ports(uint16_t count);

    // Adds a device with its port and MMIO ranges (registered on the bus at once). Before the
    // machine starts only.
    // A device the firmware tables describe to the guest (a Linux guest finds virtio-mmio
    // devices only through ACPI): its first MMIO window and its interrupt line.
    enum class Announce { None, VirtioMmio };
    struct Placement {
        std::vector<std::pair<uint16_t, uint16_t>> ports;  // (first, count)
        std::vector<std::pair<uint64_t, uint64_t>> mmio;   // (first, size)
        Announce announce = Announce::None;
        uint32_t irq = 0;  // with an announcement: the line the device raises
    };
    base::Result<Device*> add(std::unique_ptr<Device> device, const Placement& placement);

    struct Announced {
        Announce kind;
        uint64_t mmio_base;
        uint64_t mmio_size;
        uint32_t irq;
    };
    // The announced devices, in the order they were added.
    const std::vector<Announced>& announced() const { return m_announced; }

    // The machine starts: no device may be added from now on.
    void seal() { m_sealed = true; }
    // The machine paused (every vCPU parked) / is about to resume.
    void quiesce();
    void resume();

    const std::vector<std::unique_ptr<Device>>& devices() const { return m_devices; }

private:
    DeviceContext m_context;
    IoBus& m_bus;
    bool m_sealed = false;
    std::vector<std::unique_ptr<Device>> m_devices;
    std::vector<Pausable*> m_pausable;
    std::vector<Announced> m_announced;
    std::vector<uint32_t> m_irqs;                 // claimed lines
    uint64_t m_next_mmio = 0;                      // offset into the device MMIO window
    uint32_t m_next_ports = 0;                     // offset into the device port range
};

// colod's standard board: the devices every machine has (COM1 as the console, the power
// port), built on `board`. `power_off` is called with the guest's exit code.
struct StandardDevices {
    Uart* uart = nullptr;
};
base::Result<StandardDevices> build_standard_board(Board& board, std::function<void(int exit_code)> power_off);

}  // namespace colod::core
