// SPDX-License-Identifier: GPL-2.0-or-later
#include "core/linux_boot.h"

#include <algorithm>
#include <cstring>

#include "core/guest_memory.h"

namespace colod::core {

namespace {

using namespace linux_layout;

// The boot protocol's GDT: __BOOT_CS at 0x10 (64-bit code) and __BOOT_DS at 0x18, flat.
constexpr uint64_t k_gdt_entries[] = {
    0,
    0,
    0x00af9b000000ffffull,  // 0x10: 64-bit code, DPL 0
    0x00cf93000000ffffull,  // 0x18: data, DPL 0
};

// boot_params (the zero page) offsets.
constexpr size_t k_bp_acpi_rsdp_addr = 0x070;
constexpr size_t k_bp_e820_entries = 0x1e8;
constexpr size_t k_bp_vid_mode = 0x1fa;
constexpr size_t k_bp_type_of_loader = 0x210;
constexpr size_t k_bp_ramdisk_image = 0x218;
constexpr size_t k_bp_ramdisk_size = 0x21c;
constexpr size_t k_bp_cmd_line_ptr = 0x228;
constexpr size_t k_bp_e820_table = 0x2d0;
constexpr size_t k_e820_max = 128;
constexpr size_t k_entry_offset = 0x200;  // the 64-bit entry, from the load address

template <typename T>
void put_le(std::vector<std::byte>& page, size_t offset, T value) {
    std::memcpy(page.data() + offset, &value, sizeof(T));  // x86: little-endian
}

uint64_t low_ram_end(const GuestMemory& memory) {
    for (const auto& region : memory.regions())
        if (region.guest_phys == 0)
            return region.size;
    return 0;
}

}  // namespace

std::vector<E820Entry> e820_map(const GuestMemory& memory) {
    std::vector<E820Entry> map;
    for (const auto& region : memory.regions()) {
        if (region.guest_phys == 0 && region.size > k_acpi_tables_end) {
            map.push_back({0, k_low_ram_end, 1});
            map.push_back({k_low_ram_end, k_acpi_tables_end - k_low_ram_end, 2});
            map.push_back({k_acpi_tables_end, region.size - k_acpi_tables_end, 1});
        } else {
            map.push_back({region.guest_phys, region.size, 1});
        }
    }
    return map;
}

base::Result<BootState> setup_linux_boot(GuestMemory& memory, const LinuxBoot& boot, const kvm_sregs& sregs_template) {
    auto head = boot.kernel.first(std::min<size_t>(boot.kernel.size(), 4096));
    auto image = TRY(base::BzImage::parse(head, boot.kernel.size()));
    uint64_t low_end = low_ram_end(memory);
    TRY(image.check_fits(low_end));
    if (boot.cmdline.size() > image.cmdline_size || boot.cmdline.size() >= k_cmdline_max)
        return base::Error::make(base::Errc::Invalid, "kernel command line of {} bytes (this kernel takes at most {})",
                                 boot.cmdline.size(), std::min<uint64_t>(image.cmdline_size, k_cmdline_max - 1));
    if (boot.acpi_tables.size() > k_acpi_tables_end - k_acpi_tables)
        return base::Error::make(base::Errc::Invalid, "ACPI tables of {} bytes do not fit the BIOS area",
                                 boot.acpi_tables.size());

    // The initrd goes as high as the kernel allows in low RAM, page-aligned, above the kernel's
    // working space (Linux moves nothing out of the way of an initrd).
    uint64_t kernel_end = image.load_address() + image.init_size;
    uint64_t initrd_address = 0;
    if (!boot.initrd.empty()) {
        uint64_t top = std::min<uint64_t>(low_end, uint64_t{image.initrd_addr_max} + 1);
        if (boot.initrd.size() > top || ((top - boot.initrd.size()) & ~uint64_t{0xfff}) < kernel_end)
            return base::Error::make(base::Errc::Invalid,
                                     "an initrd of {} MiB does not fit between the kernel (up to {} MiB) and the end of "
                                     "low guest memory ({} MiB): give the guest more memory",
                                     (boot.initrd.size() + (1 << 20) - 1) >> 20, kernel_end >> 20, top >> 20);
        initrd_address = (top - boot.initrd.size()) & ~uint64_t{0xfff};
    }

    auto map = e820_map(memory);
    if (map.size() > k_e820_max)
        return base::Error::make(base::Errc::Invalid, "{} e820 entries (at most {})", map.size(), k_e820_max);

    // The zero page: the kernel's own setup header, then what the loader fills in.
    std::vector<std::byte> params(4096);
    std::memcpy(params.data() + base::BzImage::k_header_offset, boot.kernel.data() + base::BzImage::k_header_offset,
                image.header_end - base::BzImage::k_header_offset);
    put_le<uint16_t>(params, k_bp_vid_mode, 0xffff);  // "normal": no video mode change
    put_le<uint8_t>(params, k_bp_type_of_loader, 0xff);  // a loader without an assigned id
    put_le<uint32_t>(params, k_bp_cmd_line_ptr, static_cast<uint32_t>(k_cmdline));
    put_le<uint32_t>(params, k_bp_ramdisk_image, static_cast<uint32_t>(initrd_address));
    put_le<uint32_t>(params, k_bp_ramdisk_size, static_cast<uint32_t>(boot.initrd.size()));
    put_le<uint64_t>(params, k_bp_acpi_rsdp_addr, boot.rsdp_address);
    put_le<uint8_t>(params, k_bp_e820_entries, static_cast<uint8_t>(map.size()));
    for (size_t i = 0; i < map.size(); ++i) {
        size_t at = k_bp_e820_table + i * 20;
        put_le<uint64_t>(params, at, map[i].address);
        put_le<uint64_t>(params, at + 8, map[i].size);
        put_le<uint32_t>(params, at + 16, map[i].type);
    }

    std::vector<std::byte> cmdline(boot.cmdline.size() + 1);
    std::memcpy(cmdline.data(), boot.cmdline.data(), boot.cmdline.size());

    TRY(write_guest(memory, image.load_address(), boot.kernel.subspan(image.kernel_offset), "the kernel"));
    if (!boot.initrd.empty())
        TRY(write_guest(memory, initrd_address, boot.initrd, "the initrd"));
    TRY(write_guest(memory, k_boot_params, params, "boot_params"));
    TRY(write_guest(memory, k_cmdline, cmdline, "the command line"));
    TRY(write_guest(memory, k_acpi_tables, boot.acpi_tables, "the ACPI tables"));
    TRY(write_guest(memory, k_gdt, std::as_bytes(std::span(k_gdt_entries)), "the GDT"));
    TRY(write_identity_page_tables(memory));

    BootState state;
    state.sregs = long_mode_sregs(sregs_template, k_boot_cs, k_boot_ds, k_gdt, sizeof(k_gdt_entries) - 1);
    state.regs.rip = image.load_address() + k_entry_offset;
    state.regs.rsi = k_boot_params;
    state.regs.rflags = 0x2;  // interrupts off, as the protocol requires
    return state;
}

}  // namespace colod::core
