/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The whole contract between colod and a guest it boots directly (an ELF64 image), versioned.
 * Included by the monitor (core/boot.*) and by freestanding guests (guests/), so it is plain C.
 *
 * Entry state
 *   - 64-bit long mode, CPL 0, RFLAGS = 0x2 (interrupts off).
 *   - Paging on: an identity map (2 MiB pages, writable, executable, supervisor) of guest
 *     physical memory from 0 to max(RAM end, 4 GiB). CR3 points into the boot area below 1 MiB.
 *   - GDT with COLOD_GDT_CODE64 (CS) and COLOD_GDT_DATA (DS, ES, SS, FS, GS); no TSS, no IDT.
 *   - RDI = guest-physical address of struct colod_boot_info; RSP = COLOD_BOOT_STACK_TOP, a
 *     small stack in the boot area, good for the first few calls only.
 *   - Everything below COLOD_IMAGE_MIN is the monitor's boot area: guests must not load there.
 *     The boot info, GDT and page tables live there; the monitor never changes the boot area
 *     after entry, so a guest may keep using them for its whole life (it is ordinary guest RAM,
 *     saved with every checkpoint).
 *   - Each PT_LOAD segment is copied to p_paddr and zero-filled from p_filesz to p_memsz.
 *
 * Machine
 *   - COM1: 16550A UART at port 0x3f8, IRQ 4 (IOAPIC pin 4), bridged to the console endpoint.
 *   - PIT (8254) at ports 0x40-0x43, IRQ 0 on IOAPIC pin 0 (KVM's default routing).
 *   - PIC (8259) pair at 0x20/0xa0: a guest that uses the IOAPIC must mask both
 *     (out 0x21, 0xff; out 0xa1, 0xff), or PIT interrupts also arrive through LVT0 ExtINT.
 *   - Local APIC at 0xfee00000, IOAPIC at 0xfec00000.
 *   - Power port: a 32-bit write of an exit code to COLOD_PORT_POWER powers the guest off
 *     (code 0 = clean shutdown). Any other stop (triple fault, HLT with interrupts off) is a
 *     crash of the guest.
 *   - RAM: the regions listed in the boot info; the 3 GiB to 4 GiB hole is never RAM.
 */
#ifndef COLOD_GUEST_ABI_H
#define COLOD_GUEST_ABI_H

#include <stdint.h>

#define COLOD_ABI_VERSION 1u
#define COLOD_BOOT_MAGIC 0x4f4c4f43u /* "COLO" little-endian */

#define COLOD_GDT_CODE64 0x08u
#define COLOD_GDT_DATA 0x10u

#define COLOD_IMAGE_MIN 0x100000ull   /* lowest address a PT_LOAD segment may use */
#define COLOD_BOOT_STACK_TOP 0x8000ull /* top of the monitor's small entry stack */
#define COLOD_MMIO_HOLE_START 0xc0000000ull
#define COLOD_MMIO_HOLE_END 0x100000000ull

#define COLOD_PORT_COM1 0x3f8u
#define COLOD_IRQ_COM1 4u
#define COLOD_IRQ_PIT 0u
#define COLOD_PORT_POWER 0x505u

#define COLOD_LAPIC_BASE 0xfee00000ull
#define COLOD_IOAPIC_BASE 0xfec00000ull

#define COLOD_BOOT_MAX_REGIONS 4u
#define COLOD_BOOT_CMDLINE_MAX 256u

struct colod_ram_region {
    uint64_t start; /* guest-physical, page-aligned */
    uint64_t size;  /* bytes, page-aligned */
};

struct colod_boot_info {
    uint32_t magic;       /* COLOD_BOOT_MAGIC */
    uint32_t abi_version; /* COLOD_ABI_VERSION */
    uint64_t memory_bytes; /* total RAM (sum of the regions) */
    uint32_t vcpus;
    uint32_t region_count;
    struct colod_ram_region regions[COLOD_BOOT_MAX_REGIONS];
    uint64_t image_end; /* first byte after the highest PT_LOAD segment (page-aligned) */
    char cmdline[COLOD_BOOT_CMDLINE_MAX]; /* NUL-terminated */
};

#endif
