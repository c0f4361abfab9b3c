// SPDX-License-Identifier: GPL-2.0-or-later
// The virtio-mmio transport, register layout version 2 (virtio 1.x §4.2.2): one device model
// behind a 0x200-byte MMIO window and one level-triggered interrupt line. The ACPI DSDT names
// each window as an LNRO0005 device; Linux's virtio_mmio driver binds to it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "core/board.h"
#include "core/device.h"
#include "core/guest_memory.h"
#include "core/virtio/device.h"
#include "core/virtio/queue.h"

namespace colod::core::virtio {

class MmioTransport final : public core::Device, public core::Pausable, public Transport {
public:
    // Registers 0x000-0x0ff, configuration space 0x100-0x1ff (what Linux and the DSDT expect).
    static constexpr uint64_t k_window_size = 0x200;
    static constexpr uint32_t k_magic = 0x74726976;  // "virt"
    static constexpr uint32_t k_version = 2;
    // "CLOD" in little-endian ASCII. virtio-mmio's VendorID is informative only (it is no PCI
    // vendor id and Linux keeps no quirks keyed on it); it tells a guest whose device this is.
    static constexpr uint32_t k_vendor_id = 0x444f4c43;
    static constexpr uint16_t k_state_version = 1;
    // Bound on a model's nested state when loading (the rng needs about 64 KiB).
    static constexpr uint32_t k_max_device_state = 4u << 20;
    // Ring features the transport implements and offers with every model's own.
    static constexpr uint64_t k_transport_features = k_feature_version_1 | k_feature_indirect_desc | k_feature_event_idx;

    // `base` is the window's guest-physical address (mmio_read/mmio_write receive absolute
    // addresses); `irq` drives the device's interrupt line (DeviceContext::irq()). Fails if the
    // model's queue shape is not one a transport can offer.
    static base::Result<std::unique_ptr<MmioTransport>> create(std::unique_ptr<VirtioDevice> device, uint64_t base,
                                                               GuestMemory& memory, std::function<void(bool)> irq);

    ~MmioTransport() override;

    // Takes the queues' notifications through doorbells: the guest's write of a queue's index
    // to QueueNotify then signals an eventfd inside KVM and the vCPU goes on, while a thread of
    // the transport's own ("bell-<type>") hands the notification to the model under the lock,
    // as a vCPU's exit would (the model's quiesce() waits for a notification being handled; one
    // that comes while quiesced the model takes up at resume(): core/virtio/device.h). Writes the
    // doorbells do not take (another width, a queue that does not exist) still come as MMIO
    // writes. An error leaves nothing connected and the transport on MMIO writes alone.
    // `wiring` must outlive the transport. Once, before the machine runs.
    base::Result<void> use_doorbells(DoorbellWiring& wiring);
    bool has_doorbells() const { return m_bell_thread.joinable(); }

    VirtioDevice& device() { return *m_device; }
    uint64_t base() const { return m_base; }

    // core::Device. Names are "virtio-<type>@<hex base>": unique per machine and the same on
    // both sides of a pair.
    std::string_view name() const override { return m_name; }
    uint16_t state_version() const override { return k_state_version; }
    void mmio_read(uint64_t addr, std::span<std::byte> data) override;
    void mmio_write(uint64_t addr, std::span<const std::byte> data) override;
    DeviceState save_state() const override;
    base::Result<void> check_state(const DeviceState& state) const override;
    // Loads in place (the machine is paused) and re-drives the interrupt line to match the
    // loaded InterruptStatus.
    base::Result<void> load_state(const DeviceState& state) override;

    // core::Pausable: passed on to the model.
    void quiesce() override;
    void resume() override;

    // Transport (for the model; lock held).
    std::unique_lock<std::mutex> lock() override { return std::unique_lock(m_mutex); }
    GuestMemory& memory() override { return *m_memory; }
    Queue& queue(uint16_t index) override { return m_queues[index]; }  // the model's own index
    uint64_t driver_features() const override { return m_driver_features; }
    bool active() const override;
    void notify_used(uint16_t index) override;
    void config_changed() override;
    void queue_broken(uint16_t index, const base::Error& why) override;

    // For tests and status: the device status register and InterruptStatus.
    uint32_t status() const;
    uint32_t interrupt_status() const;

private:
    struct Saved;
    MmioTransport(std::unique_ptr<VirtioDevice> device, uint64_t base, GuestMemory& memory, std::function<void(bool)> irq);

    uint64_t offered_features() const { return m_device->device_features() | k_transport_features; }
    uint32_t read_register(uint64_t offset);
    void write_register(uint64_t offset, uint32_t value);
    void write_status(uint32_t value);
    void reset_device();
    // Sets bits in InterruptStatus / recomputes the line (lock held).
    void raise(uint32_t bits);
    void update_line();
    Queue* selected_queue();
    base::Result<Saved> decode_state(const DeviceState& state) const;
    // The driver notified queue `index` (lock held): to the model, if the queue runs.
    void notify_queue(uint32_t index);
    void ring_loop();

    const std::unique_ptr<VirtioDevice> m_device;
    const uint64_t m_base;
    GuestMemory* const m_memory;
    const std::function<void(bool)> m_irq;
    const std::string m_name;

    mutable std::mutex m_mutex;
    std::vector<Queue> m_queues;
    uint32_t m_status = 0;
    uint64_t m_driver_features = 0;
    uint32_t m_device_features_sel = 0;
    uint32_t m_driver_features_sel = 0;
    uint32_t m_queue_sel = 0;
    uint32_t m_interrupt_status = 0;
    uint32_t m_config_generation = 0;
    bool m_line = false;  // the level last driven on the interrupt line

    // Doorbells (use_doorbells()): one eventfd per queue, and one that stops the thread.
    DoorbellWiring* m_wiring = nullptr;
    std::vector<base::Fd> m_bells;
    base::Fd m_bell_stop;
    std::string m_bell_thread_name;
    std::thread m_bell_thread;
};

}  // namespace colod::core::virtio
