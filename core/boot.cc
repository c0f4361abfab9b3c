// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/boot.h"

#include <algorithm>
#include <cstring>

#include "core/elf_loader.h"
#include "core/guest_memory.h"
#include "core/platform.h"
#include "guests/abi.h"

namespace colod::core {

namespace {

// Boot area layout (all below COLOD_IMAGE_MIN).
constexpr uint64_t k_gdt = 0x1000;
constexpr uint64_t k_boot_info = 0x2000;
constexpr uint64_t k_pml4 = 0x10000;
constexpr uint64_t k_pdpt = 0x11000;
constexpr uint64_t k_first_pd = 0x12000;
constexpr uint64_t k_max_pds = (COLOD_IMAGE_MIN - k_first_pd) / k_page_size;

constexpr uint64_t k_gdt_entries[] = {
    0,                      // null
    0x00af9b000000ffffull,  // 0x08: 64-bit code, DPL 0
    0x00cf93000000ffffull,  // 0x10: data, DPL 0
};

constexpr uint64_t PTE_P = 1, PTE_RW = 2, PTE_PWT = 8, PTE_PCD = 0x10, PTE_PS = 0x80;
constexpr uint64_t k_gib = 1ull << 30, k_2mib = 2ull << 20;

kvm_segment flat_segment(uint16_t selector, uint8_t type, bool code) {
    kvm_segment s{};
    s.base = 0;
    s.limit = 0xffffffff;
    s.selector = selector;
    s.type = type;
    s.present = 1;
    s.dpl = 0;
    s.db = code ? 0 : 1;
    s.s = 1;
    s.l = code ? 1 : 0;
    s.g = 1;
    return s;
}

template <typename T>
base::Result<void> write_guest(GuestMemory& memory, uint64_t gpa, const T* data, size_t count, std::string_view what) {
    return write_guest(memory, gpa, std::as_bytes(std::span(data, count)), what);
}

}  // namespace

base::Result<void> write_guest(GuestMemory& memory, uint64_t gpa, std::span<const std::byte> bytes,
                               std::string_view what) {
    auto target = memory.slice(gpa, bytes.size(), GuestMemory::Access::Write);
    if (!target)
        return base::Error::make(base::Errc::Invalid, "{} ({} bytes at {:#x}) does not fit the guest's RAM", what,
                                 bytes.size(), gpa);
    std::memcpy(target->data(), bytes.data(), bytes.size());
    return base::ok();
}

base::Result<uint64_t> write_identity_page_tables(GuestMemory& memory) {
    // Identity map from 0 to max(RAM end, 4 GiB) with 2 MiB pages; the MMIO hole uncached.
    uint64_t top = platform::k_mmio_hole_end;
    for (const auto& region : memory.regions())
        top = std::max(top, region.guest_phys + region.size);
    uint64_t pds = (top + k_gib - 1) / k_gib;
    if (pds > k_max_pds || pds > 512)
        return base::Error::make(base::Errc::Invalid, "guest address space of {} GiB is too large for the boot page tables",
                                 pds);
    uint64_t pml4[512] = {};
    pml4[0] = k_pdpt | PTE_P | PTE_RW;
    TRY(write_guest(memory, k_pml4, pml4, 512, "the boot page tables"));
    uint64_t pdpt[512] = {};
    for (uint64_t i = 0; i < pds; ++i)
        pdpt[i] = (k_first_pd + i * k_page_size) | PTE_P | PTE_RW;
    TRY(write_guest(memory, k_pdpt, pdpt, 512, "the boot page tables"));
    for (uint64_t i = 0; i < pds; ++i) {
        uint64_t pd[512];
        for (uint64_t j = 0; j < 512; ++j) {
            uint64_t addr = i * k_gib + j * k_2mib;
            uint64_t flags = PTE_P | PTE_RW | PTE_PS;
            if (addr >= platform::k_mmio_hole_start && addr < platform::k_mmio_hole_end)
                flags |= PTE_PCD | PTE_PWT;
            pd[j] = addr | flags;
        }
        TRY(write_guest(memory, k_first_pd + i * k_page_size, pd, 512, "the boot page tables"));
    }
    return k_pml4;
}

kvm_sregs long_mode_sregs(const kvm_sregs& sregs_template, uint16_t code_selector, uint16_t data_selector,
                          uint64_t gdt_base, uint16_t gdt_limit) {
    kvm_sregs sregs = sregs_template;
    sregs.cs = flat_segment(code_selector, 0xb, true);
    kvm_segment data = flat_segment(data_selector, 0x3, false);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    // VM entry wants a usable TR and LDT even in long mode (Intel): a busy 64-bit TSS type and
    // an LDT type, both present, base 0.
    sregs.tr = kvm_segment{};
    sregs.tr.limit = 0x67;
    sregs.tr.type = 0xb;
    sregs.tr.present = 1;
    sregs.ldt = kvm_segment{};
    sregs.ldt.limit = 0xffff;
    sregs.ldt.type = 0x2;
    sregs.ldt.present = 1;
    sregs.gdt.base = gdt_base;
    sregs.gdt.limit = gdt_limit;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x80050033;  // PG | AM | WP | NE | ET | MP | PE
    sregs.cr3 = k_pml4;
    sregs.cr4 = 0x20;     // PAE
    sregs.efer = 0x500;   // LME | LMA
    return sregs;
}

base::Result<BootState> setup_direct_boot(GuestMemory& memory, const ElfImage& image, uint32_t vcpus,
                                          std::string_view cmdline, const kvm_sregs& sregs_template) {
    if (memory.size() < COLOD_IMAGE_MIN + k_page_size)
        return base::Error::make(base::Errc::Invalid, "guest RAM of {} bytes leaves no room above the boot area",
                                 memory.size());
    if (cmdline.size() >= COLOD_BOOT_CMDLINE_MAX)
        return base::Error::make(base::Errc::Invalid, "guest command line of {} bytes (at most {})", cmdline.size(),
                                 COLOD_BOOT_CMDLINE_MAX - 1);

    TRY(write_guest(memory, k_gdt, k_gdt_entries, std::size(k_gdt_entries), "the GDT"));
    TRY(write_identity_page_tables(memory));

    colod_boot_info info{};
    info.magic = COLOD_BOOT_MAGIC;
    info.abi_version = COLOD_ABI_VERSION;
    info.memory_bytes = memory.size();
    info.vcpus = vcpus;
    info.region_count = static_cast<uint32_t>(std::min<size_t>(memory.regions().size(), COLOD_BOOT_MAX_REGIONS));
    for (uint32_t i = 0; i < info.region_count; ++i)
        info.regions[i] = colod_ram_region{memory.regions()[i].guest_phys, memory.regions()[i].size};
    info.image_end = image.end;
    std::memcpy(info.cmdline, cmdline.data(), cmdline.size());
    TRY(write_guest(memory, k_boot_info, &info, 1, "the boot information"));

    BootState boot;
    boot.sregs = long_mode_sregs(sregs_template, COLOD_GDT_CODE64, COLOD_GDT_DATA, k_gdt, sizeof(k_gdt_entries) - 1);
    boot.regs.rip = image.entry;
    boot.regs.rsp = COLOD_BOOT_STACK_TOP;
    boot.regs.rdi = k_boot_info;
    boot.regs.rflags = 0x2;
    return boot;
}

std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::span<const kvm_cpuid_entry2> supported, uint32_t id,
                                             TscDeadline tsc_deadline) {
    std::vector<kvm_cpuid_entry2> entries(supported.begin(), supported.end());
    for (auto& entry : entries) {
        if (entry.function == 1) {
            entry.ebx = (entry.ebx & 0x00ffffff) | (id << 24);  // initial APIC ID
            entry.ecx |= 1u << 31;                             // running under a hypervisor
            if (tsc_deadline == TscDeadline::Present)
                entry.ecx |= 1u << 24;
        } else if (entry.function == 0xb || entry.function == 0x1f) {
            entry.edx = id;  // x2APIC ID
        } else if (entry.function == 0x40000001) {
            entry.eax &= kvm_pv_features_kept;
        }
    }
    return entries;
}

}  // namespace colod::core
