// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/guest_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/platform.h"
#include "kvm/vm.h"
#include "proto/crc32c.h"

namespace colod::core {

base::Result<GuestMemory> GuestMemory::create(uint64_t bytes) {
    if (bytes == 0 || bytes % k_page_size != 0)
        return base::Error::make(base::Errc::Invalid, "guest memory of {} bytes is not a whole number of pages", bytes);
    GuestMemory memory;
    int fd = ::memfd_create("colod-guest-ram", MFD_CLOEXEC);
    if (fd < 0)
        return base::Error::from_errno("memfd_create");
    memory.m_fd = base::Fd(fd);
    if (::ftruncate(fd, static_cast<off_t>(bytes)) < 0)
        return base::Error::from_errno("ftruncate(guest RAM)");
    void* addr = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
    if (addr == MAP_FAILED)
        return base::Error::from_errno(fmt::format("mmap of {} bytes of guest RAM", bytes));
    memory.m_map = base::Mapping(addr, bytes);
    memory.m_size = bytes;
    // A core dump of the daemon leaves the guest's RAM out: it is the guest's data (its keys,
    // its users'), and as big as the guest. Not being able to say so costs only a bigger core.
    (void)::madvise(addr, bytes, MADV_DONTDUMP);

    uint64_t low = std::min<uint64_t>(bytes, platform::k_mmio_hole_start);
    memory.m_regions.push_back(RamRegion{0, low, 0});
    if (bytes > low)
        memory.m_regions.push_back(RamRegion{platform::k_mmio_hole_end, bytes - low, low / k_page_size});
    memory.m_vmm_dirty = DirtyBitmap(bytes / k_page_size);
    uint64_t largest = 0;
    for (const auto& region : memory.m_regions)
        largest = std::max(largest, region.size / k_page_size);
    memory.m_scratch.assign((largest + 63) / 64, 0);
    return memory;
}

GuestMemory::GuestMemory(GuestMemory&& other) noexcept
    : m_fd(std::move(other.m_fd)),
      m_map(std::move(other.m_map)),
      m_size(std::exchange(other.m_size, 0)),
      m_regions(std::move(other.m_regions)),
      m_vmm_dirty(std::move(other.m_vmm_dirty)),
      m_scratch(std::move(other.m_scratch)) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& other) noexcept {
    m_fd = std::move(other.m_fd);
    m_map = std::move(other.m_map);
    m_size = std::exchange(other.m_size, 0);
    m_regions = std::move(other.m_regions);
    m_vmm_dirty = std::move(other.m_vmm_dirty);
    m_scratch = std::move(other.m_scratch);
    return *this;
}

GuestMemory::~GuestMemory() = default;

base::Result<std::span<std::byte>> GuestMemory::slice(uint64_t gpa, uint64_t len, Access access) {
    for (const auto& region : m_regions) {
        if (gpa < region.guest_phys || gpa - region.guest_phys >= region.size)
            continue;
        uint64_t offset = gpa - region.guest_phys;
        if (len > region.size - offset)
            break;
        uint64_t host_offset = region.first_page * k_page_size + offset;
        if (access == Access::Write && len > 0) {
            uint64_t first = host_offset / k_page_size;
            uint64_t last = (host_offset + len - 1) / k_page_size;
            mark_dirty(first, last - first + 1);
        }
        return std::span<std::byte>(m_map.data() + host_offset, len);
    }
    return base::Error::make(base::Errc::Invalid, "guest range {:#x}+{:#x} is not RAM", gpa, len);
}

base::Result<uint64_t> GuestMemory::page_index(uint64_t gpa) const {
    for (const auto& region : m_regions) {
        if (gpa >= region.guest_phys && gpa - region.guest_phys < region.size)
            return region.first_page + (gpa - region.guest_phys) / k_page_size;
    }
    return base::Error::make(base::Errc::Invalid, "guest address {:#x} is not RAM", gpa);
}

base::Result<void> GuestMemory::register_slots(kvm::Vm& vm, bool log_dirty) {
    for (size_t i = 0; i < m_regions.size(); ++i) {
        const auto& region = m_regions[i];
        TRY(vm.set_memory_slot(kvm::MemorySlot{static_cast<uint32_t>(i), region.guest_phys, region.size,
                                               page(region.first_page), log_dirty}));
    }
    return base::ok();
}

void GuestMemory::clear() {
    // memset rather than punching the pages out of the memfd: the next checkpoint reads every
    // page (to find them zero), which would fault each one back in inside the guest's pause.
    std::memset(m_map.data(), 0, m_size);
    mark_dirty(0, page_count());
}

void GuestMemory::mark_dirty(uint64_t first_page, uint64_t count) {
    std::lock_guard lock(m_dirty_mutex);
    for (uint64_t page = first_page; page < first_page + count && page < m_vmm_dirty.pages(); ++page)
        m_vmm_dirty.set(page);
}

base::Result<void> GuestMemory::harvest_dirty(kvm::Vm& vm, DirtyBitmap& out) {
    std::lock_guard lock(m_dirty_mutex);
    for (size_t i = 0; i < m_regions.size(); ++i) {
        const auto& region = m_regions[i];
        uint64_t pages = region.size / k_page_size;
        std::span<uint64_t> bitmap(m_scratch.data(), (pages + 63) / 64);
        std::fill(bitmap.begin(), bitmap.end(), 0);
        TRY(vm.dirty_log(static_cast<uint32_t>(i), bitmap));
        TRY(vm.clear_dirty_log(static_cast<uint32_t>(i), 0, pages, bitmap));
        // Regions start on 64-page boundaries of the global index (3 GiB is), so whole words
        // can be merged.
        auto words = out.words();
        size_t base_word = region.first_page / 64;
        for (size_t w = 0; w < bitmap.size(); ++w)
            words[base_word + w] |= bitmap[w];
    }
    out.merge(m_vmm_dirty);
    m_vmm_dirty.clear();
    return base::ok();
}

uint64_t GuestMemory::digest() const {
    uint64_t digest = 14695981039346656037ull;
    for (uint64_t i = 0; i < page_count(); ++i)
        digest = (digest ^ proto::crc32c(std::span<const std::byte>(page(i), k_page_size))) * 1099511628211ull;
    return digest;
}

void GuestMemory::restore_dirty(const DirtyBitmap& bits) {
    std::lock_guard lock(m_dirty_mutex);
    m_vmm_dirty.merge(bits);
}

}  // namespace colod::core
