/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * COM1 (16550A): interrupt-driven receive into a ring buffer, polled transmit.
 *
 * The IRQ 4 handler is the only producer of the ring and the main loop the only consumer. The
 * handler never drops a byte: when the ring is full it turns the UART's receive interrupt off
 * and leaves the bytes in the UART (which holds them, and the console endpoint behind it pushes
 * back); serial_rx_consume() turns it on again once there is room.
 */
#ifndef COLOD_GUESTS_KVSTORE_SERIAL_H
#define COLOD_GUESTS_KVSTORE_SERIAL_H

#include <stddef.h>
#include <stdint.h>

/* Programs 115200 8N1, FIFOs, OUT2 and the receive interrupt. Interrupts must be off. Output
 * works from the moment this returns (panic messages during the rest of boot need it). */
void serial_init(void);

/* Sends len bytes, waiting for the transmitter as needed. Callable with interrupts on or off. */
void serial_write(const char *bytes, size_t len);

/* The IRQ 4 handler body (interrupts off, EOI left to the caller). */
void serial_irq(void);

/* Moves bytes the UART holds into the ring. Interrupts must be off. The idle loop calls it
 * before halting, so a byte whose interrupt edge went missing is picked up at the next wake-up
 * (at most one timer tick later) instead of waiting for the next byte. */
void serial_poll(void);

/* The longest contiguous run of received bytes; *bytes points at it. 0 = ring empty. */
size_t serial_rx_peek(const uint8_t **bytes);

/* Releases the first n bytes returned by serial_rx_peek(). Call with interrupts on. */
void serial_rx_consume(size_t n);

#endif
