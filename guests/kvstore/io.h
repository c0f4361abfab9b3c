/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Port I/O, MMIO and interrupt-flag helpers for the guest's platform code (never the engine). */
#ifndef COLOD_GUESTS_KVSTORE_IO_H
#define COLOD_GUESTS_KVSTORE_IO_H

#include <stdint.h>

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void outl(uint16_t port, uint32_t value)
{
    __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port));
}

/* SAFETY: the LAPIC and IOAPIC windows are identity mapped by the monitor (guests/abi.h); the
 * volatile access makes each register read or write happen exactly once, in program order. */
static inline void mmio_write32(uint64_t address, uint32_t value)
{
    *(volatile uint32_t *)(uintptr_t)address = value;
}

static inline uint32_t mmio_read32(uint64_t address)
{
    return *(volatile uint32_t *)(uintptr_t)address;
}

static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)value), "d"((uint32_t)(value >> 32)));
}

static inline void cli(void)
{
    __asm__ volatile("cli" : : : "memory");
}

static inline void sti(void)
{
    __asm__ volatile("sti" : : : "memory");
}

/* STI's one-instruction interrupt shadow covers the HLT: an interrupt that became pending
 * while IF was 0 is taken after the HLT starts, so it wakes the HLT instead of being missed. */
static inline void sti_hlt(void)
{
    __asm__ volatile("sti; hlt" : : : "memory");
}

static inline void compiler_barrier(void)
{
    __asm__ volatile("" : : : "memory");
}

static inline uint64_t read_cr2(void)
{
    uint64_t value;
    __asm__ volatile("mov %%cr2, %0" : "=r"(value));
    return value;
}

#endif
