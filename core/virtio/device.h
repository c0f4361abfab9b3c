// SPDX-License-Identifier: GPL-2.0-or-later
// The contract between a virtio device model (rng, later net and blk) and the transport that
// puts it on a bus (virtio-mmio here). The transport owns the registers, the status and feature
// negotiation, the queues and the interrupt; the model owns what the device does with the
// buffers and its configuration space.
//
// Locking: the transport has one lock that covers itself, its queues and the model's state.
// The transport holds it whenever it calls the model (the calls below marked "lock held").
// A model that completes requests on a thread of its own takes it with Transport::lock() and
// then uses the queues and notify_used() as the transport would; the transport's lock is
// always the outer one (a model's own lock, if any, is taken inside it, never around it).
//
// Pausing: the machine quiesces every Pausable before it captures a checkpoint and loads
// state; the transport is one and passes quiesce()/resume() to its model, which must then stop
// touching guest memory and its state until resume(). quiesce()/resume() are called without
// the lock held (a model parking a worker that waits for the lock must be able to). A queue
// notification can come while quiesced (a doorbell the guest rang before the pause, handled by
// the transport's thread after it): the model leaves it and looks at its queues at resume().
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "core/board.h"
#include "core/guest_memory.h"
#include "core/virtio/queue.h"

namespace colod::core::virtio {

// Device status bits (§2.1).
inline constexpr uint32_t k_status_acknowledge = 0x01;
inline constexpr uint32_t k_status_driver = 0x02;
inline constexpr uint32_t k_status_driver_ok = 0x04;
inline constexpr uint32_t k_status_features_ok = 0x08;
inline constexpr uint32_t k_status_needs_reset = 0x40;
inline constexpr uint32_t k_status_failed = 0x80;

// InterruptStatus bits (§4.2.2).
inline constexpr uint32_t k_interrupt_used = 0x1;
inline constexpr uint32_t k_interrupt_config = 0x2;

// What a model may use of its transport. Every member needs the transport's lock.
class Transport {
public:
    virtual ~Transport() = default;
    // Takes the transport's lock (for a model's own threads).
    virtual std::unique_lock<std::mutex> lock() = 0;
    virtual GuestMemory& memory() = 0;
    // Queue `index` < the model's queue_count().
    virtual Queue& queue(uint16_t index) = 0;
    virtual uint64_t driver_features() const = 0;
    // DRIVER_OK is set and DEVICE_NEEDS_RESET is not: the model may process its queues.
    virtual bool active() const = 0;
    // Used buffers were pushed on queue `index`: interrupts the driver unless it suppressed it.
    virtual void notify_used(uint16_t index) = 0;
    // The model changed its configuration space (new generation, config-change interrupt).
    virtual void config_changed() = 0;
    // Queue `index` is malformed (`why`): DEVICE_NEEDS_RESET, logged; the model stops using
    // its queues until the driver resets the device.
    virtual void queue_broken(uint16_t index, const base::Error& why) = 0;
};

// What a device did with the chain at the head of a queue, for serve_queue(): a length, the
// chain is used with that many bytes written into it; std::nullopt, the chain stays in the ring
// and the walk stops (the device waits: back-pressure, no entropy, a full tap); an error, the
// queue is broken.
using Served = base::Result<std::optional<uint32_t>>;
inline Served used_chain(uint32_t written) { return Served(std::optional<uint32_t>(written)); }
inline Served leave_in_ring() { return Served(std::optional<uint32_t>()); }

// A device's walk over its queue `index`, with the transport's lock held: each available chain
// goes to `serve` (a callable taking `const Chain&` and returning Served) and, when used,
// back to the driver; when the ring runs dry the walk asks for a notification and looks once
// more (the driver may have added a chain before it could see the request); the driver is
// notified once at the end if any chain was used. A malformed ring, or an error from `serve`,
// is queue_broken() and ends the walk.
template <typename Serve>
void serve_queue(Transport& transport, uint16_t index, Serve&& serve) {
    Queue& queue = transport.queue(index);
    bool pushed = false;
    for (;;) {
        auto next = queue.peek();
        if (!next) {
            transport.queue_broken(index, next.error());
            return;
        }
        if (!next.value()) {
            auto more = queue.arm_notifications();
            if (!more) {
                transport.queue_broken(index, more.error());
                return;
            }
            if (more.value())
                continue;
            break;
        }
        const Chain& chain = *next.value();
        Served served = serve(chain);
        if (!served) {
            transport.queue_broken(index, served.error());
            return;
        }
        if (!served.value())
            break;
        queue.consume();
        if (auto used = queue.push_used(chain.head, *served.value()); !used) {
            transport.queue_broken(index, used.error());
            return;
        }
        pushed = true;
    }
    if (pushed)
        transport.notify_used(index);
}

class VirtioDevice : public Pausable {
public:
    // Short type for the device's name on the machine: "rng" gives "virtio-rng@<base>".
    virtual std::string_view type_name() const = 0;
    // The virtio device id (§5).
    virtual uint32_t device_id() const = 0;
    // Device-specific feature bits (0 to 23); the transport adds VIRTIO_F_VERSION_1 and the
    // ring features it implements.
    virtual uint64_t device_features() const = 0;
    virtual uint16_t queue_count() const = 0;
    // A power of two from 1 to k_max_queue_size.
    virtual uint16_t queue_max_size(uint16_t index) const = 0;

    // Called once by the transport's construction; the transport outlives the model's use of it.
    virtual void attach(Transport& transport) = 0;

    // Configuration space at `offset`, 1, 2 or 4 bytes (lock held). Bytes beyond the model's
    // configuration read as zero and ignore writes.
    virtual void read_config(uint32_t offset, std::span<std::byte> data) = 0;
    virtual void write_config(uint32_t offset, std::span<const std::byte> data) = 0;

    // The driver set DRIVER_OK (lock held): queues are set up, processing may start.
    virtual void activate() = 0;
    // Device reset (lock held): drop every request in flight; the transport resets the queues
    // afterwards and the model must not push anything on them from now on.
    virtual void reset() = 0;
    // The driver kicked queue `index` (lock held; a vCPU thread, or the transport's doorbell
    // thread). Only while active(); possibly while quiesced (see Pausing above).
    virtual void queue_notify(uint16_t index) = 0;

    // The model's own state, a nested blob of the transport's (lock held, machine paused).
    // check_state() changes nothing; load_state() validates completely before changing
    // anything and loads in place.
    virtual uint16_t state_version() const = 0;
    virtual std::vector<std::byte> save_state() const = 0;
    virtual base::Result<void> check_state(uint16_t version, std::span<const std::byte> bytes) const = 0;
    virtual base::Result<void> load_state(uint16_t version, std::span<const std::byte> bytes) = 0;
};

}  // namespace colod::core::virtio
