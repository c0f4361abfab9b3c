// SPDX-License-Identifier: GPL-2.0-or-later
// The devices a Linux guest has beyond the standard board (COM1, the power port): the ACPI
// power-management block (power off and reset, as the FADT describes them) and the virtio
// devices on virtio-mmio, which the ACPI tables announce (docs/linux-guests.md says why
// virtio-mmio rather than virtio-pci).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/result.h"
#include "core/net/frames.h"

namespace colod::core {

class Board;
namespace disk {
class BlockBackend;
}
namespace acpi {
class AcpiPm;
}
namespace virtio {
class BlkDevice;
class MmioTransport;
class NetDevice;
class RngDevice;
}  // namespace virtio

struct LinuxBoardCallbacks {
    std::function<void()> power_off;  // the guest entered S5
    std::function<void()> reset;      // the guest wrote the reset register
};

// What the guest has beyond the devices every Linux guest gets.
struct LinuxBoardOptions {
    std::optional<net::Mac> nic_mac;  // a virtio-net NIC with this MAC; none when empty
    // A virtio-blk disk on this backend (none when null), answering GET_ID with `disk_serial`.
    // It comes after the rng and the NIC, so they keep their windows and interrupt lines.
    std::shared_ptr<disk::BlockBackend> disk;
    std::string disk_serial;
};

// What build_linux_board added (owned by the board).
struct LinuxDevices {
    acpi::AcpiPm* pm = nullptr;
    virtio::MmioTransport* rng_transport = nullptr;
    virtio::RngDevice* rng = nullptr;
    virtio::MmioTransport* net_transport = nullptr;
    virtio::NetDevice* net = nullptr;  // null without a NIC
    virtio::MmioTransport* blk_transport = nullptr;
    virtio::BlkDevice* blk = nullptr;  // null without a disk
};

base::Result<LinuxDevices> build_linux_board(Board& board, LinuxBoardCallbacks callbacks,
                                             const LinuxBoardOptions& options = {});

}  // namespace colod::core
