// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/virtio/queue.h"

#include <atomic>
#include <bit>
#include <cstring>

namespace colod::core::virtio {

// virtio 1.x rings are little-endian; the host is x86, so a native load is the ring's value.
static_assert(std::endian::native == std::endian::little, "virtio rings are little-endian");

namespace {

constexpr uint64_t k_desc_bytes = 16;

// Sizes of the areas (§2.7): descriptor table, available ring (flags, idx, ring[size],
// used_event), used ring (flags, idx, ring[size] of {id, len}, avail_event).
uint64_t desc_table_bytes(uint16_t size) { return k_desc_bytes * size; }
uint64_t avail_ring_bytes(uint16_t size) { return 6 + 2ull * size; }
uint64_t used_ring_bytes(uint16_t size) { return 6 + 8ull * size; }

base::Error broken(std::string message) { return base::Error(base::Errc::Invalid, std::move(message)); }

}  // namespace

Queue::Queue(GuestMemory& memory, uint16_t max_size) : m_memory(&memory), m_max_size(max_size) {
    m_state.size = max_size;
}

void Queue::reset() {
    m_state = State{};
    m_state.size = m_max_size;
    m_event_idx = false;
    m_indirect = false;
}

base::Result<void> Queue::check_layout(const State& state) const {
    uint16_t size = state.size;
    if (size == 0 || size > m_max_size || !std::has_single_bit(size))
        return broken(fmt::format("queue size {} is not a power of two from 1 to {}", size, m_max_size));
    // The alignment the spec requires (§2.7): it also keeps every 16-bit ring field naturally
    // aligned, which the atomic accesses below need.
    if (state.desc_addr % 16 || state.driver_addr % 2 || state.device_addr % 4)
        return broken(fmt::format("misaligned queue areas: descriptors {:#x}, driver {:#x}, device {:#x}",
                                  state.desc_addr, state.driver_addr, state.device_addr));
    // Checked once here for a clear message; every access is checked again through slice().
    if (auto r = m_memory->slice(state.desc_addr, desc_table_bytes(size), GuestMemory::Access::Read); !r)
        return std::move(r).error().context("descriptor table");
    if (auto r = m_memory->slice(state.driver_addr, avail_ring_bytes(size), GuestMemory::Access::Read); !r)
        return std::move(r).error().context("available ring");
    if (auto r = m_memory->slice(state.device_addr, used_ring_bytes(size), GuestMemory::Access::Read); !r)
        return std::move(r).error().context("used ring");
    return base::ok();
}

base::Result<void> Queue::enable(uint64_t features) {
    TRY(check_layout(m_state));
    m_state.ready = true;
    m_state.last_avail = 0;
    m_state.used_idx = 0;
    m_state.signalled_used = 0;
    m_event_idx = features & k_feature_event_idx;
    m_indirect = features & k_feature_indirect_desc;
    return base::ok();
}

base::Result<uint16_t*> Queue::ring_u16(uint64_t gpa, GuestMemory::Access access) {
    auto bytes = TRY(m_memory->slice(gpa, sizeof(uint16_t), access));
    // SAFETY: slice() checked that the two bytes are guest RAM; check_layout() made the ring
    // areas 2-aligned and every ring field sits at an even offset in them, so the pointer is a
    // naturally aligned uint16_t that stays mapped as long as the GuestMemory lives.
    return reinterpret_cast<uint16_t*>(bytes.data());
}

base::Result<Queue::Desc> Queue::read_desc(uint64_t table, uint32_t index) {
    auto bytes = TRY(m_memory->slice(table + k_desc_bytes * index, k_desc_bytes, GuestMemory::Access::Read));
    // One copy of the descriptor, checked and used from then on: the driver may change the
    // table under us, and a second read could differ from what was checked.
    Desc desc;
    std::memcpy(&desc.addr, bytes.data(), 8);
    std::memcpy(&desc.len, bytes.data() + 8, 4);
    std::memcpy(&desc.flags, bytes.data() + 12, 2);
    std::memcpy(&desc.next, bytes.data() + 14, 2);
    return desc;
}

base::Result<void> Queue::add_buffer(Chain& chain, const Desc& desc) {
    if (auto r = m_memory->slice(desc.addr, desc.len, GuestMemory::Access::Read); !r)
        return std::move(r).error().context(fmt::format("chain {} buffer", chain.head));
    if (desc.flags & k_desc_f_write) {
        chain.writable.push_back(Buffer{desc.addr, desc.len});
        chain.writable_bytes += desc.len;
    } else {
        if (!chain.writable.empty())
            return broken(fmt::format("chain {}: a device-readable buffer after a device-writable one", chain.head));
        chain.readable.push_back(Buffer{desc.addr, desc.len});
        chain.readable_bytes += desc.len;
    }
    return base::ok();
}

// Walks the chain from chain.head. Direct descriptors are at most `size` long (any more means
// the `next` fields loop); a descriptor with VIRTQ_DESC_F_INDIRECT may end the direct part
// (§2.7.5.3.2: zero or more direct descriptors, then one indirect) and its table, of at most
// `size` entries, is walked with the same bound. Indirect tables do not nest.
base::Result<void> Queue::walk(Chain& chain) {
    uint64_t table = m_state.desc_addr;
    uint32_t count = m_state.size;
    uint32_t index = chain.head;
    uint32_t seen = 0;
    bool in_indirect = false;
    for (;;) {
        if (index >= count)
            return broken(fmt::format("chain {}: descriptor index {} outside a table of {}", chain.head, index, count));
        if (++seen > count)
            return broken(fmt::format("chain {}: longer than its table of {} descriptors (a loop)", chain.head, count));
        Desc desc = TRY(read_desc(table, index));
        if (desc.flags & k_desc_f_indirect) {
            if (!m_indirect)
                return broken(fmt::format("chain {}: indirect descriptor, VIRTIO_F_INDIRECT_DESC not negotiated", chain.head));
            if (in_indirect)
                return broken(fmt::format("chain {}: indirect descriptor inside an indirect table", chain.head));
            if (desc.flags & k_desc_f_next)
                return broken(fmt::format("chain {}: indirect descriptor with NEXT set", chain.head));
            if (desc.len == 0 || desc.len % k_desc_bytes || desc.len / k_desc_bytes > m_state.size)
                return broken(fmt::format("chain {}: indirect table of {} bytes (a multiple of 16, at most {} entries)",
                                          chain.head, desc.len, m_state.size));
            if (auto r = m_memory->slice(desc.addr, desc.len, GuestMemory::Access::Read); !r)
                return std::move(r).error().context(fmt::format("chain {} indirect table", chain.head));
            // The WRITE flag of the descriptor naming the table means nothing (§2.7.5.3.2).
            table = desc.addr;
            count = desc.len / k_desc_bytes;
            index = 0;
            seen = 0;
            in_indirect = true;
            continue;
        }
        TRY(add_buffer(chain, desc));
        if (!(desc.flags & k_desc_f_next))
            return base::ok();
        index = desc.next;
    }
}

base::Result<std::optional<Chain>> Queue::peek() {
    if (!m_state.ready)
        return std::optional<Chain>{};
    uint16_t* avail_idx = TRY(ring_u16(m_state.driver_addr + 2, GuestMemory::Access::Read));
    // SAFETY: an aligned 16-bit field in guest RAM (ring_u16); acquire pairs with the driver's
    // write barrier before it stores avail->idx, so the entries and descriptors it published
    // are visible to the reads below.
    uint16_t published = __atomic_load_n(avail_idx, __ATOMIC_ACQUIRE);
    uint16_t pending = static_cast<uint16_t>(published - m_state.last_avail);
    if (pending == 0)
        return std::optional<Chain>{};
    if (pending > m_state.size)
        return broken(fmt::format("avail->idx {} is {} entries ahead of the device on a queue of {}", published, pending,
                                  m_state.size));
    uint16_t slot = static_cast<uint16_t>(m_state.last_avail & (m_state.size - 1));
    uint16_t* entry = TRY(ring_u16(m_state.driver_addr + 4 + 2ull * slot, GuestMemory::Access::Read));
    // SAFETY: as above; ordered after the acquire load.
    Chain chain;
    chain.head = __atomic_load_n(entry, __ATOMIC_RELAXED);
    TRY(walk(chain));
    return std::optional<Chain>(std::move(chain));
}

base::Result<std::optional<Chain>> Queue::pop() {
    auto chain = TRY(peek());
    if (chain)
        consume();
    return chain;
}

base::Result<void> Queue::push_used(uint16_t head, uint32_t len) {
    if (!m_state.ready)
        return broken("used buffer returned on a queue that is not ready");
    if (head >= m_state.size)
        return broken(fmt::format("used buffer {} on a queue of {}", head, m_state.size));
    // A device returns only chains it took: more would overrun the driver's bookkeeping.
    if (static_cast<uint16_t>(m_state.last_avail - m_state.used_idx) == 0)
        return broken(fmt::format("used buffer {} returned with no chain in flight", head));
    uint16_t slot = static_cast<uint16_t>(m_state.used_idx & (m_state.size - 1));
    auto elem = TRY(m_memory->slice(m_state.device_addr + 4 + 8ull * slot, 8, GuestMemory::Access::Write));
    uint32_t id = head;
    std::memcpy(elem.data(), &id, 4);
    std::memcpy(elem.data() + 4, &len, 4);
    ++m_state.used_idx;
    uint16_t* used_idx = TRY(ring_u16(m_state.device_addr + 2, GuestMemory::Access::Write));
    // SAFETY: an aligned 16-bit field in guest RAM (ring_u16); release publishes the element
    // written above before the driver can see the new index.
    __atomic_store_n(used_idx, m_state.used_idx, __ATOMIC_RELEASE);
    return base::ok();
}

base::Result<bool> Queue::should_interrupt() {
    uint16_t old_idx = m_state.signalled_used;
    uint16_t new_idx = m_state.used_idx;
    m_state.signalled_used = new_idx;
    if (!m_state.ready || old_idx == new_idx)
        return false;
    // The driver writes its suppression state and then reads used->idx (with a full barrier
    // between); we wrote used->idx and now read its state: a full fence on our side too, or
    // each could miss the other's write and the interrupt would be lost.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (m_event_idx) {
        uint16_t* used_event_field = TRY(ring_u16(m_state.driver_addr + 4 + 2ull * m_state.size, GuestMemory::Access::Read));
        // SAFETY: an aligned 16-bit field in guest RAM (ring_u16), ordered by the fence above.
        uint16_t used_event = __atomic_load_n(used_event_field, __ATOMIC_RELAXED);
        // vring_need_event(): interrupt when used_event lies in [old_idx, new_idx).
        return static_cast<uint16_t>(new_idx - used_event - 1) < static_cast<uint16_t>(new_idx - old_idx);
    }
    uint16_t* flags_field = TRY(ring_u16(m_state.driver_addr, GuestMemory::Access::Read));
    // SAFETY: as above.
    uint16_t flags = __atomic_load_n(flags_field, __ATOMIC_RELAXED);
    return !(flags & k_avail_f_no_interrupt);
}

base::Result<bool> Queue::arm_notifications() {
    if (!m_state.ready)
        return false;
    if (m_event_idx) {
        uint16_t* avail_event = TRY(ring_u16(m_state.device_addr + 4 + 8ull * m_state.size, GuestMemory::Access::Write));
        // SAFETY: an aligned 16-bit field in guest RAM (ring_u16). The fence orders this store
        // before the avail->idx load below, pairing with the driver's barrier between storing
        // avail->idx and reading avail_event: either it sees our avail_event and notifies, or
        // we see its new index.
        __atomic_store_n(avail_event, m_state.last_avail, __ATOMIC_RELAXED);
        std::atomic_thread_fence(std::memory_order_seq_cst);
    }
    uint16_t* avail_idx = TRY(ring_u16(m_state.driver_addr + 2, GuestMemory::Access::Read));
    // SAFETY: as above.
    return __atomic_load_n(avail_idx, __ATOMIC_ACQUIRE) != m_state.last_avail;
}

base::Result<void> Queue::check(const State& state, uint64_t features) const {
    (void)features;  // the layout rules do not depend on them; kept for symmetry with load()
    if (state.size > m_max_size)
        return broken(fmt::format("queue size {} above its maximum {}", state.size, m_max_size));
    if (!state.ready)
        return base::ok();
    TRY(check_layout(state));
    if (static_cast<uint16_t>(state.last_avail - state.used_idx) > state.size)
        return broken(fmt::format("{} chains in flight on a queue of {}",
                                  static_cast<uint16_t>(state.last_avail - state.used_idx), state.size));
    return base::ok();
}

void Queue::load(const State& state, uint64_t features) {
    m_state = state;
    m_event_idx = features & k_feature_event_idx;
    m_indirect = features & k_feature_indirect_desc;
}

}  // namespace colod::core::virtio
