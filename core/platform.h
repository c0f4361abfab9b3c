// SPDX-License-Identifier: GPL-2.0-or-later
// colod's x86 platform: where things are in a guest's physical address space and on its port
// and interrupt buses, and what the board may hand out to the devices it builds. This is the
// monitor's map. The direct-boot guest contract (guests/abi.h) repeats the few facts a guest
// relies on; the checks at the end keep the two in agreement.
#pragma once

#include <array>
#include <cstdint>

#include "guests/abi.h"

namespace colod::core::platform {

// RAM is below the hole and from its end up; the hole is never RAM.
inline constexpr uint64_t k_mmio_hole_start = 0xc000'0000;
inline constexpr uint64_t k_mmio_hole_end = 0x1'0000'0000;

// KVM's in-kernel interrupt controllers.
inline constexpr uint64_t k_ioapic_base = 0xfec0'0000;
inline constexpr uint64_t k_lapic_base = 0xfee0'0000;
inline constexpr uint32_t k_ioapic_pins = 24;

// Fixed legacy devices (ISA numbering).
inline constexpr uint32_t k_irq_pit = 0;          // KVM's PIT, on IOAPIC pin 0
inline constexpr uint16_t k_port_com1 = 0x3f8;    // 16550A UART: the console
inline constexpr uint32_t k_irq_com1 = 4;
inline constexpr uint16_t k_port_power = 0x505;   // 32-bit write: power off with that exit code

// What the board allocates to devices built from the config.
// MMIO windows: in the hole, below the IOAPIC, 4 KiB aligned.
inline constexpr uint64_t k_device_mmio_start = 0xd000'0000;
inline constexpr uint64_t k_device_mmio_end = k_ioapic_base;
// Interrupt lines: IOAPIC pins no legacy device uses (not 0 PIT, 1 keyboard, 2 cascade, 3 COM2,
// 4 COM1, 8 RTC, 9 ACPI, 12 mouse, 13 FPU, 14/15 IDE).
// Pins above 15 first: the in-kernel 8259s do not see them, so a level-triggered device line
// there is the IOAPIC's alone, as a Linux guest programs it from the ACPI tables.
inline constexpr std::array<uint32_t, 13> k_device_irqs{16, 17, 18, 19, 20, 21, 22, 23, 5, 6, 7, 10, 11};
// Ports: a range no legacy PC device uses.
inline constexpr uint16_t k_device_ports_start = 0x6000;
inline constexpr uint16_t k_device_ports_end = 0x7000;

// The guest contract says the same.
static_assert(k_mmio_hole_start == COLOD_MMIO_HOLE_START && k_mmio_hole_end == COLOD_MMIO_HOLE_END);
static_assert(k_ioapic_base == COLOD_IOAPIC_BASE && k_lapic_base == COLOD_LAPIC_BASE);
static_assert(k_port_com1 == COLOD_PORT_COM1 && k_irq_com1 == COLOD_IRQ_COM1 && k_irq_pit == COLOD_IRQ_PIT);
static_assert(k_port_power == COLOD_PORT_POWER);
static_assert(k_device_mmio_start >= k_mmio_hole_start && k_device_mmio_end <= k_mmio_hole_end);

}  // namespace colod::core::platform
