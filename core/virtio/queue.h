// SPDX-License-Identifier: GPL-2.0-or-later
// A split virtqueue (virtio 1.x §2.7), seen from the device.
//
// The three areas live in guest RAM and the driver writes them concurrently from other vCPUs,
// so every value read from them is distrusted: ring indices are checked against the queue size,
// chains are bounded by their table (a loop is an error, not a hang), every buffer is checked
// through GuestMemory::slice(), and each descriptor is copied out once and checked on the copy
// (a second read could see a different value). A malformed ring is an error the transport
// turns into DEVICE_NEEDS_RESET.
//
// Ordering with the driver: avail->idx is loaded with acquire before the ring entries and
// descriptors it publishes are read; used entries are written before used->idx is stored with
// release; before reading the driver's interrupt suppression (flags or used_event) and after
// writing avail_event, a full fence pairs with the driver's own barrier (Linux's virtio_mb()),
// so neither side misses the other's update.
//
// A Queue is not thread-safe: its owner (the transport) serialises every call with its lock.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "base/result.h"
#include "core/guest_memory.h"

namespace colod::core::virtio {

// Feature bits the transport and the ring implement (virtio 1.x §6).
inline constexpr uint64_t k_feature_indirect_desc = 1ull << 28;
inline constexpr uint64_t k_feature_event_idx = 1ull << 29;
inline constexpr uint64_t k_feature_version_1 = 1ull << 32;

// Descriptor and ring flags (§2.7.5, §2.7.6).
inline constexpr uint16_t k_desc_f_next = 1;
inline constexpr uint16_t k_desc_f_write = 2;
inline constexpr uint16_t k_desc_f_indirect = 4;
inline constexpr uint16_t k_avail_f_no_interrupt = 1;

// The largest split queue the spec allows.
inline constexpr uint16_t k_max_queue_size = 32768;

// One guest buffer of a chain: already checked to lie wholly in guest RAM.
struct Buffer {
    uint64_t gpa = 0;
    uint32_t len = 0;
};

// A descriptor chain taken from the available ring: device-readable buffers first, then
// device-writable ones (the order the spec demands and the walk enforces).
struct Chain {
    uint16_t head = 0;
    std::vector<Buffer> readable;
    std::vector<Buffer> writable;
    uint64_t readable_bytes = 0;
    uint64_t writable_bytes = 0;
};

class Queue {
public:
    // Everything of a queue that the guest can observe or that the device must remember: the
    // driver's configuration and the device's ring positions. Fixed-width fields only.
    struct State {
        uint16_t size = 0;
        bool ready = false;
        uint64_t desc_addr = 0;
        uint64_t driver_addr = 0;  // available ring
        uint64_t device_addr = 0;  // used ring
        uint16_t last_avail = 0;   // next available ring entry the device will take
        uint16_t used_idx = 0;     // the device's copy of used->idx (it alone writes it)
        uint16_t signalled_used = 0;  // used_idx when interrupt suppression was last evaluated
    };

    // `max_size` is a power of two, 1 to k_max_queue_size (the transport checks it).
    Queue(GuestMemory& memory, uint16_t max_size);

    uint16_t max_size() const { return m_max_size; }

    // The driver's configuration, written while the queue is not ready (the transport ignores
    // writes while it is). Checked only when the driver enables the queue.
    uint16_t size() const { return m_state.size; }
    void set_size(uint16_t size) { m_state.size = size; }
    uint64_t desc_addr() const { return m_state.desc_addr; }
    uint64_t driver_addr() const { return m_state.driver_addr; }
    uint64_t device_addr() const { return m_state.device_addr; }
    void set_desc_addr(uint64_t gpa) { m_state.desc_addr = gpa; }
    void set_driver_addr(uint64_t gpa) { m_state.driver_addr = gpa; }
    void set_device_addr(uint64_t gpa) { m_state.device_addr = gpa; }

    bool ready() const { return m_state.ready; }
    // QueueReady = 1 with the negotiated `features`: checks the size (a power of two up to the
    // maximum), the areas' alignment (§2.7) and that they lie in RAM, and starts the ring at
    // index 0. On error the queue stays not ready.
    base::Result<void> enable(uint64_t features);
    // QueueReady = 0: the device stops using the queue; its configuration stays.
    void disable() { m_state.ready = false; }
    // Device reset: back to the state after construction.
    void reset();

    // The chain at the head of the available ring, without taking it, or nothing when the
    // driver has made no buffer available (or the queue is not ready). An error means the
    // ring is malformed.
    base::Result<std::optional<Chain>> peek();
    // Takes the chain the last peek() returned (the device will return it with push_used()).
    void consume() { ++m_state.last_avail; }
    // peek() + consume().
    base::Result<std::optional<Chain>> pop();

    // Returns chain `head` to the driver with `len` bytes written into its writable buffers.
    base::Result<void> push_used(uint16_t head, uint32_t len);
    // Whether the driver wants an interrupt for the entries pushed since the last call
    // (VIRTQ_AVAIL_F_NO_INTERRUPT, or used_event with VIRTIO_F_EVENT_IDX). Call once after a
    // batch of push_used().
    base::Result<bool> should_interrupt();
    // Asks the driver to notify for the next buffer it makes available (with EVENT_IDX:
    // avail_event = last_avail, then a fence) and says whether buffers are available already
    // (then the caller processes them, or it could wait for a notification that never comes).
    base::Result<bool> arm_notifications();

    State state() const { return m_state; }
    // Checks a saved state against this queue (maximum size, layout, indices) and guest RAM
    // without changing anything.
    base::Result<void> check(const State& state, uint64_t features) const;
    // Loads a state check() accepted.
    void load(const State& state, uint64_t features);

private:
    struct Desc {
        uint64_t addr;
        uint32_t len;
        uint16_t flags;
        uint16_t next;
    };
    base::Result<void> check_layout(const State& state) const;
    base::Result<Desc> read_desc(uint64_t table, uint32_t index);
    base::Result<void> walk(Chain& chain);
    base::Result<void> add_buffer(Chain& chain, const Desc& desc);
    base::Result<uint16_t*> ring_u16(uint64_t gpa, GuestMemory::Access access);

    GuestMemory* m_memory;
    uint16_t m_max_size;
    State m_state;
    bool m_event_idx = false;
    bool m_indirect = false;
};

}  // namespace colod::core::virtio
