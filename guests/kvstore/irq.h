/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Interrupts and timer: the IDT (every vector has a handler; exceptions and unknown vectors
 * panic), the 8259 pair masked, the local APIC enabled, IOAPIC pins 0 (PIT) and 4 (COM1)
 * routed, and PIT channel 0 at 100 Hz.
 */
#ifndef COLOD_GUESTS_KVSTORE_IRQ_H
#define COLOD_GUESTS_KVSTORE_IRQ_H

#include <stdint.h>

#define IRQ_VECTOR_TIMER 0x30u
#define IRQ_VECTOR_COM1 0x31u
#define IRQ_VECTOR_SPURIOUS 0xffu

#define PIT_HZ_DIVISOR 11932u /* 1193182 Hz / 11932 = 100.0 Hz */

/* What the vector stubs (entry.S) push, lowest address first. */
struct irq_frame {
    uint64_t r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
    uint64_t vector;
    uint64_t error_code; /* 0 for vectors without one */
    uint64_t rip, cs, rflags, rsp, ss;
};

/* Timer interrupts taken; incremented by the timer stub in entry.S. */
extern volatile uint64_t g_ticks;

/* Sets up everything above with interrupts still off; the caller enables them (sti). */
void irq_init(void);

/* Writes "PANIC <what>" to COM1 and powers the guest off with exit code `code` (non-zero).
 * Never returns. */
_Noreturn void panic(const char *what, uint32_t code);

/* Called by the common vector stub in entry.S. */
void irq_dispatch(struct irq_frame *frame);

#endif
