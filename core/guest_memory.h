// SPDX-License-Identifier: GPL-2.0-or-later
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "base/fd.h"
#include "base/result.h"
#include "core/dirty_bitmap.h"

namespace colod::kvm {
class Vm;
}

namespace colod::core {

constexpr uint64_t k_page_size = 4096;

// A contiguous piece of guest RAM in guest-physical space, backed by part of the memfd.
struct RamRegion {
    uint64_t guest_phys;
    uint64_t size;
    uint64_t first_page;  // global page index of the region's first page
};

// All of a guest's RAM: one memfd mapped once, laid out in guest-physical space around the
// MMIO hole (RAM below 3 GiB, the rest from 4 GiB up). Pages have a global index 0..page_count()
// that runs across the regions without the hole; the replication protocol speaks in it.
//
// Every write the VMM makes into guest RAM goes through this class (slice() with
// Access::Write, or mark_dirty()), so that KVM's dirty log OR ours covers every change.
class GuestMemory {
public:
    enum class Access { Read, Write };

    static base::Result<GuestMemory> create(uint64_t bytes);

    GuestMemory(GuestMemory&&) noexcept;
    GuestMemory& operator=(GuestMemory&&) noexcept;
    ~GuestMemory();

    uint64_t size() const { return m_size; }
    uint64_t page_count() const { return m_size / k_page_size; }
    const std::vector<RamRegion>& regions() const { return m_regions; }

    // The one checked translation from guest-physical to host memory: fails unless
    // [gpa, gpa + len) lies wholly inside one RAM region. A Write marks the pages dirty.
    base::Result<std::span<std::byte>> slice(uint64_t gpa, uint64_t len, Access access);

    // Host address of a page by global index (index < page_count()).
    std::byte* page(uint64_t index) const { return m_map.data() + index * k_page_size; }
    // Global page index of a guest-physical address in RAM, or an Invalid error.
    base::Result<uint64_t> page_index(uint64_t gpa) const;

    // Registers every region as a KVM memory slot (slot number = region number).
    base::Result<void> register_slots(kvm::Vm& vm, bool log_dirty);

    // Records a VMM write to guest RAM that did not go through slice().
    void mark_dirty(uint64_t first_page, uint64_t count);

    // Clears all of RAM to zero and marks it dirty (a reboot in place). The VM must be paused.
    void clear();

    // Moves every page written since the last harvest into `out` (which it ORs into): KVM's
    // dirty log for each slot plus the VMM's own bitmap. Both are re-armed. The VM must be
    // paused, or pages written during the harvest may be reported in the next one instead
    // (never lost).
    base::Result<void> harvest_dirty(kvm::Vm& vm, DirtyBitmap& out);
    // Puts harvested bits back (a checkpoint that failed to go out), so the next harvest
    // reports those pages again.
    void restore_dirty(const DirtyBitmap& bits);

    // A 64-bit digest of all of RAM (per-page CRC32C, combined in page order), for comparing
    // the two sides of a pair at the same checkpoint.
    uint64_t digest() const;

    // Whole-memory helpers for tests and snapshots.
    std::span<std::byte> all() const { return m_map.bytes(); }

private:
    GuestMemory() = default;

    base::Fd m_fd;
    base::Mapping m_map;
    uint64_t m_size = 0;
    std::vector<RamRegion> m_regions;
    std::mutex m_dirty_mutex;  // guards m_vmm_dirty and m_scratch
    DirtyBitmap m_vmm_dirty;
    std::vector<uint64_t> m_scratch;  // harvest buffer, sized for the largest slot
};

}  // namespace colod::core
