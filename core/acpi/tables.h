// SPDX-License-Identifier: GPL-2.0-or-later
// The ACPI tables of colod's x86 platform, for guests that boot without firmware (a stock
// Linux kernel through the 64-bit boot protocol): RSDP, XSDT and RSDT, FADT, FACS, MADT, DSDT.
// They describe a classic (not hardware-reduced) ACPI PC: every vCPU's local APIC, KVM's
// IOAPIC and 8259 pair, the PM registers of AcpiPm (core/acpi/pm.h) for power off and reset,
// COM1, and the virtio-mmio devices, which Linux's virtio_mmio driver finds through their
// _HID "LNRO0005".
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "base/result.h"

namespace colod::core::acpi {

// One virtio-mmio transport: its register window and its interrupt line (an IOAPIC pin, which
// the DSDT declares level-triggered, active high, as virtio-mmio's interrupt is a level).
struct VirtioMmioDevice {
    uint64_t base = 0;  // below 4 GiB: the DSDT describes it with Memory32Fixed
    uint32_t size = 0;
    uint32_t gsi = 0;   // below platform::k_ioapic_pins
};

struct TableLayout {
    uint32_t vcpus = 0;  // local APIC IDs 0..vcpus-1, all enabled; 1 to 255
    std::vector<VirtioMmioDevice> virtio_mmio;  // named VR00, VR01, ... in \_SB; at most 256
    // The GSI that KVM's PIT (ISA IRQ 0) arrives on. With KVM's default GSI routing, which
    // colod keeps, GSI 0 is IOAPIC pin 0 (core/platform.h). A VMM that reroutes GSI 0 to pin 2
    // (QEMU does, and says IRQ 0 -> GSI 2 in its MADT) sets 2 here.
    uint32_t timer_gsi = 0;
};

struct Tables {
    std::vector<std::byte> bytes;  // to be written at guest-physical `base`
    uint64_t rsdp_address = 0;     // == base: the RSDP comes first
};

// Identification in every table header.
inline constexpr char k_oem_id[] = "COLOD ";        // 6 characters
inline constexpr char k_oem_table_id[] = "COLODVMM";  // 8 characters
inline constexpr uint32_t k_oem_revision = 1;
inline constexpr char k_creator_id[] = "COLO";      // 4 characters
inline constexpr uint32_t k_creator_revision = 1;

inline constexpr uint32_t k_max_vcpus = 255;  // xAPIC IDs in one byte; 0xff is "all processors"
inline constexpr size_t k_max_virtio_mmio = 256;  // two hex digits in VRxx

// Builds the tables for the guest-physical address `base` (16-byte aligned; the RSDP is at
// `base` itself, where Linux also finds it by scanning 0xE0000-0xFFFFF for "RSD PTR "). Fails
// with Errc::Invalid, naming the problem, for 0 or more than 255 vCPUs, a virtio-mmio device
// that the tables cannot describe, a misaligned base, or tables larger than `max_bytes` or
// reaching above 4 GiB (the RSDT and the FADT's 32-bit fields hold 32-bit addresses).
base::Result<Tables> build_tables(const TableLayout& layout, uint64_t base, uint64_t max_bytes);

}  // namespace colod::core::acpi
