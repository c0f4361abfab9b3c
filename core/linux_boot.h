// SPDX-License-Identifier: GPL-2.0-or-later
// Direct boot of a Linux bzImage through the 64-bit boot protocol (Documentation/arch/x86/
// boot.rst): no firmware runs. colod lays out what a boot loader and the firmware would have
// left in guest RAM — the protected-mode kernel at its preferred address, the initrd high in
// low memory, the zero page (boot_params: the setup header, the e820 map, the ACPI root
// pointer), the command line, the ACPI tables, a GDT and identity page tables — and points the
// bootstrap vCPU at the kernel's 64-bit entry. The other vCPUs wait for INIT/SIPI from the
// kernel (KVM's in-kernel LAPIC), as on a PC.
#pragma once

#include "kvm/kernel_abi.h"

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "base/bzimage.h"
#include "base/result.h"
#include "core/boot.h"

namespace colod::core {

class GuestMemory;

// Where the loader puts things (guest-physical), all in RAM below 1 MiB but the kernel and the
// initrd. The e820 map reserves 0x9fc00 to 1 MiB, as a PC's BIOS area: the ACPI tables live there.
namespace linux_layout {
inline constexpr uint64_t k_gdt = 0x1000;
inline constexpr uint64_t k_boot_params = 0x7000;
inline constexpr uint64_t k_cmdline = 0x20000;
inline constexpr uint64_t k_cmdline_max = 0x10000;    // bytes up to the next thing
inline constexpr uint64_t k_low_ram_end = 0x9fc00;    // conventional memory ends (EBDA follows)
inline constexpr uint64_t k_acpi_tables = 0xe0000;    // where the BIOS area's tables start
inline constexpr uint64_t k_acpi_tables_end = 0x100000;
inline constexpr uint16_t k_boot_cs = 0x10;           // the protocol's __BOOT_CS and __BOOT_DS
inline constexpr uint16_t k_boot_ds = 0x18;
}  // namespace linux_layout

// One e820 entry (boot_params' table, and what tests compare with).
struct E820Entry {
    uint64_t address;
    uint64_t size;
    uint32_t type;  // 1 RAM, 2 reserved
};

// The e820 map of a guest's RAM: conventional memory, the reserved BIOS area up to 1 MiB,
// then every RAM region.
std::vector<E820Entry> e820_map(const GuestMemory& memory);

struct LinuxBoot {
    std::span<const std::byte> kernel;  // the whole bzImage file
    std::span<const std::byte> initrd;  // may be empty
    std::string_view cmdline;
    std::span<const std::byte> acpi_tables;  // written at linux_layout::k_acpi_tables
    uint64_t rsdp_address = 0;               // inside them
};

// Writes everything into guest RAM and returns the bootstrap vCPU's registers. Fails, before
// writing anything, when the kernel is not a bzImage this loader can boot, when the kernel,
// initrd, command line or tables do not fit the guest's RAM or their slots.
base::Result<BootState> setup_linux_boot(GuestMemory& memory, const LinuxBoot& boot, const kvm_sregs& sregs_template);

}  // namespace colod::core
