// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/linux_board.h"

#include "base/log.h"
#include "core/acpi/pm.h"
#include "core/board.h"
#include "core/virtio/blk.h"
#include "core/virtio/mmio.h"
#include "core/virtio/net.h"
#include "core/virtio/rng.h"

namespace colod::core {

namespace {

// The guest's queue notifications through KVM's ioeventfds, so that a vCPU does not stop for
// them; where KVM cannot, they come as MMIO exits (slower, the same result).
void use_doorbells(virtio::MmioTransport& transport, Board& board) {
    if (auto bells = transport.use_doorbells(board.context().doorbells()); !bells)
        base::logf(base::Level::Warning, base::Event::None, "{}: queue notifications stop a vCPU each: {}",
                   transport.name(), bells.error().message());
}

}  // namespace

base::Result<LinuxDevices> build_linux_board(Board& board, LinuxBoardCallbacks callbacks,
                                             const LinuxBoardOptions& options) {
    LinuxDevices devices;
    auto pm = std::make_unique<acpi::AcpiPm>(std::move(callbacks.power_off), std::move(callbacks.reset));
    devices.pm = pm.get();
    Board::Placement pm_place;
    for (const auto& range : acpi::k_port_ranges)
        pm_place.ports.push_back(range);
    TRY(board.add(std::move(pm), pm_place));

    // virtio-rng: host entropy until the replication engine decides where the bytes come from.
    uint32_t irq = TRY(board.claim_irq());
    uint64_t base = TRY(board.claim_mmio(virtio::MmioTransport::k_window_size));
    auto rng = std::make_unique<virtio::RngDevice>(std::make_unique<virtio::HostEntropy>());
    devices.rng = rng.get();
    auto transport =
        TRY(virtio::MmioTransport::create(std::move(rng), base, board.context().memory(), board.context().irq(irq)));
    devices.rng_transport = transport.get();
    use_doorbells(*transport, board);
    TRY(board.add(std::move(transport),
                  {{}, {{base, virtio::MmioTransport::k_window_size}}, Board::Announce::VirtioMmio, irq}));

    // virtio-net: frames the guest sends are dropped until the owner says where they go
    // (GuestRuntime joins the NIC to the host's tap).
    if (options.nic_mac) {
        uint32_t net_irq = TRY(board.claim_irq());
        uint64_t net_base = TRY(board.claim_mmio(virtio::MmioTransport::k_window_size));
        auto net = std::make_unique<virtio::NetDevice>(*options.nic_mac, [](std::span<const std::byte>) { return true; });
        devices.net = net.get();
        auto net_transport = TRY(virtio::MmioTransport::create(std::move(net), net_base, board.context().memory(),
                                                               board.context().irq(net_irq)));
        devices.net_transport = net_transport.get();
        use_doorbells(*net_transport, board);
        TRY(board.add(std::move(net_transport), {{},
                                                 {{net_base, virtio::MmioTransport::k_window_size}},
                                                 Board::Announce::VirtioMmio,
                                                 net_irq}));
    }

    // virtio-blk: requests are done on the thread that takes the notification (core/virtio/blk.h).
    if (options.disk) {
        uint32_t blk_irq = TRY(board.claim_irq());
        uint64_t blk_base = TRY(board.claim_mmio(virtio::MmioTransport::k_window_size));
        auto blk = std::make_unique<virtio::BlkDevice>(options.disk, options.disk_serial);
        devices.blk = blk.get();
        auto blk_transport = TRY(virtio::MmioTransport::create(std::move(blk), blk_base, board.context().memory(),
                                                               board.context().irq(blk_irq)));
        devices.blk_transport = blk_transport.get();
        use_doorbells(*blk_transport, board);
        TRY(board.add(std::move(blk_transport), {{},
                                                 {{blk_base, virtio::MmioTransport::k_window_size}},
                                                 Board::Announce::VirtioMmio,
                                                 blk_irq}));
    }
    return devices;
}

}  // namespace colod::core
