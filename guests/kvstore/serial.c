/* SPDX-License-Identifier: GPL-2.0-or-later */
/* COM1 driver: see serial.h for the contract between the IRQ handler and the main loop. */
#include "serial.h"

#include "../abi.h"
#include "io.h"

/* 16550A registers, as offsets from the base port. */
#define UART_RBR 0u /* receive buffer (read, DLAB = 0) */
#define UART_THR 0u /* transmit holding (write, DLAB = 0) */
#define UART_DLL 0u /* divisor latch low (DLAB = 1) */
#define UART_IER 1u /* interrupt enable (DLAB = 0) */
#define UART_DLM 1u /* divisor latch high (DLAB = 1) */
#define UART_IIR 2u /* interrupt identification (read) */
#define UART_FCR 2u /* FIFO control (write) */
#define UART_LCR 3u
#define UART_MCR 4u
#define UART_LSR 5u

#define IER_RX_AVAILABLE 0x01u
#define LCR_8N1 0x03u
#define LCR_DLAB 0x80u
#define FCR_ENABLE 0x01u      /* trigger level bits 7:6 = 00: interrupt from the first byte */
#define FCR_CLEAR_TX 0x04u    /* the receive FIFO is kept: bytes in it are console input */
#define IIR_FIFOS_ENABLED 0xc0u
#define MCR_DTR 0x01u
#define MCR_RTS 0x02u
#define MCR_OUT2 0x08u        /* gates the UART's interrupt line on PC hardware */
#define LSR_DATA_READY 0x01u
#define LSR_THR_EMPTY 0x20u

#define TX_FIFO_DEPTH 16u
#define RX_RING_SIZE 4096u    /* power of two: the free-running indices wrap with a mask */

static uint8_t g_rx_ring[RX_RING_SIZE];
static volatile uint32_t g_rx_head; /* free-running; written only by the IRQ side */
static volatile uint32_t g_rx_tail; /* free-running; written only by the main loop */
static volatile int g_rx_paused;    /* receive interrupt is off because the ring filled up */
static int g_tx_fifo;               /* 0 until the FIFO is confirmed: one byte per THRE then */

static void uart_out(unsigned reg, uint8_t value)
{
    outb((uint16_t)(COLOD_PORT_COM1 + reg), value);
}

static uint8_t uart_in(unsigned reg)
{
    return inb((uint16_t)(COLOD_PORT_COM1 + reg));
}

void serial_init(void)
{
    uart_out(UART_IER, 0);
    uart_out(UART_LCR, LCR_DLAB);
    uart_out(UART_DLL, 1); /* 115200 baud; meaningless to an emulated UART, right for real ones */
    uart_out(UART_DLM, 0);
    uart_out(UART_LCR, LCR_8N1);
    uart_out(UART_FCR, FCR_ENABLE | FCR_CLEAR_TX);
    /* A 16550A reports enabled FIFOs in IIR[7:6]; only then may one THRE take a whole burst. */
    g_tx_fifo = (uart_in(UART_IIR) & IIR_FIFOS_ENABLED) == IIR_FIFOS_ENABLED;
    uart_out(UART_MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
    g_rx_head = 0;
    g_rx_tail = 0;
    g_rx_paused = 0;
    uart_out(UART_IER, IER_RX_AVAILABLE);
}

void serial_write(const char *bytes, size_t len)
{
    size_t burst_max = g_tx_fifo ? TX_FIFO_DEPTH : 1;
    while (len != 0) {
        /* THRE set means the whole transmit FIFO (or the holding register) is empty. */
        while ((uart_in(UART_LSR) & LSR_THR_EMPTY) == 0)
            __asm__ volatile("pause");
        size_t burst = len < burst_max ? len : burst_max;
        for (size_t i = 0; i < burst; i++)
            uart_out(UART_THR, (uint8_t)bytes[i]);
        bytes += burst;
        len -= burst;
    }
}

/* Moves bytes from the UART into the ring until the UART is empty or the ring is full; in the
 * latter case the receive interrupt goes off, so the still-pending bytes cannot raise an
 * interrupt storm, and stay in the UART instead of being dropped. Interrupts must be off. */
static void rx_drain(void)
{
    uint32_t head = g_rx_head;
    while ((uart_in(UART_LSR) & LSR_DATA_READY) != 0) {
        if (head - g_rx_tail == RX_RING_SIZE) {
            uart_out(UART_IER, 0);
            g_rx_paused = 1;
            return;
        }
        g_rx_ring[head & (RX_RING_SIZE - 1)] = uart_in(UART_RBR);
        head++;
        compiler_barrier(); /* the byte is in the ring before the consumer can see it */
        g_rx_head = head;
    }
}

void serial_irq(void)
{
    rx_drain();
}

void serial_poll(void)
{
    if (!g_rx_paused)
        rx_drain();
}

size_t serial_rx_peek(const uint8_t **bytes)
{
    uint32_t tail = g_rx_tail;
    uint32_t available = g_rx_head - tail;
    compiler_barrier(); /* read the head before the bytes it covers */
    uint32_t offset = tail & (RX_RING_SIZE - 1);
    uint32_t contiguous = RX_RING_SIZE - offset;
    *bytes = &g_rx_ring[offset];
    return available < contiguous ? available : contiguous;
}

void serial_rx_consume(size_t n)
{
    compiler_barrier(); /* done with the bytes before handing their room back */
    g_rx_tail = g_rx_tail + (uint32_t)n;
    if (g_rx_paused) {
        /* Refill from the UART first, then re-arm the interrupt only if that left room:
         * interrupts are off meanwhile, so the handler cannot run in between. */
        cli();
        g_rx_paused = 0;
        rx_drain();
        if (!g_rx_paused)
            uart_out(UART_IER, IER_RX_AVAILABLE);
        sti();
    }
}
