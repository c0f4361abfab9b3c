/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Interrupt and timer set-up, the interrupt dispatcher and the panic path (see irq.h). */
#include "irq.h"

#include "../abi.h"
#include "io.h"
#include "serial.h"

volatile uint64_t g_ticks;

/* entry.S: 256 stubs of IRQ_STUB_SIZE bytes each (stub v pushes v), and the timer's own entry. */
extern const char irq_vector_stubs[];
extern const char irq_timer_entry[];
#define IRQ_STUB_SIZE 16u

/* SAFETY: the architectural layout of a 64-bit IDT gate (Intel SDM vol. 3, 6.14.1). */
struct idt_gate {
    uint16_t offset_low;
    uint16_t selector;
    uint8_t ist;
    uint8_t type_attributes;
    uint16_t offset_mid;
    uint32_t offset_high;
    uint32_t reserved;
} __attribute__((packed));
_Static_assert(sizeof(struct idt_gate) == 16, "IDT gates are 16 bytes in long mode");

/* SAFETY: the LIDT operand, a 16-bit limit followed by a 64-bit base, unpadded. */
struct idt_pointer {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

/* Present, DPL 0, 64-bit interrupt gate: IF is cleared on entry, so handlers never nest. */
#define GATE_INTERRUPT 0x8eu

static struct idt_gate g_idt[256] __attribute__((aligned(16)));

#define LAPIC_ID 0x20u
#define LAPIC_TPR 0x80u
#define LAPIC_EOI 0xb0u
#define LAPIC_SVR 0xf0u
#define LAPIC_LVT_TIMER 0x320u
#define LAPIC_LVT_LINT0 0x350u
#define LAPIC_LVT_ERROR 0x370u
#define LVT_MASKED (1u << 16)
#define SVR_APIC_ENABLED (1u << 8)
#define MSR_APIC_BASE 0x1bu
#define APIC_BASE_GLOBAL_ENABLE (1ull << 11)

#define IOAPIC_REGSEL 0x00u
#define IOAPIC_WINDOW 0x10u
#define IOAPIC_REG_VERSION 0x01u
#define IOAPIC_REG_REDIRECTION(pin) (0x10u + 2u * (pin))
#define IOAPIC_MAX_PINS 120u /* redirection registers end at index 0xff */
/* Low word of a redirection entry: vector, fixed delivery, physical destination, active high,
 * edge triggered (the ISA convention for both the PIT and COM1) are all zero bits but these. */
#define REDIRECTION_MASKED (1u << 16)

#define PIC_MASTER_DATA 0x21u
#define PIC_SLAVE_DATA 0xa1u

#define PIT_CHANNEL0 0x40u
#define PIT_COMMAND 0x43u
#define PIT_CHANNEL0_LOHI_RATE 0x34u /* channel 0, low byte then high byte, mode 2, binary */

static void lapic_write(uint32_t reg, uint32_t value)
{
    mmio_write32(COLOD_LAPIC_BASE + reg, value);
}

static uint32_t lapic_read(uint32_t reg)
{
    return mmio_read32(COLOD_LAPIC_BASE + reg);
}

static void ioapic_write(uint32_t reg, uint32_t value)
{
    mmio_write32(COLOD_IOAPIC_BASE + IOAPIC_REGSEL, reg);
    mmio_write32(COLOD_IOAPIC_BASE + IOAPIC_WINDOW, value);
}

static uint32_t ioapic_read(uint32_t reg)
{
    mmio_write32(COLOD_IOAPIC_BASE + IOAPIC_REGSEL, reg);
    return mmio_read32(COLOD_IOAPIC_BASE + IOAPIC_WINDOW);
}

static void ioapic_route(uint32_t pin, uint32_t vector, uint32_t apic_id)
{
    /* Destination first, so the entry is never unmasked while pointing at the wrong CPU. */
    ioapic_write(IOAPIC_REG_REDIRECTION(pin) + 1u, apic_id << 24);
    ioapic_write(IOAPIC_REG_REDIRECTION(pin), vector);
}

static void set_gate(uint32_t vector, const char *handler)
{
    uint64_t address = (uint64_t)(uintptr_t)handler;
    struct idt_gate *gate = &g_idt[vector];
    gate->offset_low = (uint16_t)address;
    gate->selector = COLOD_GDT_CODE64;
    gate->ist = 0;
    gate->type_attributes = GATE_INTERRUPT;
    gate->offset_mid = (uint16_t)(address >> 16);
    gate->offset_high = (uint32_t)(address >> 32);
    gate->reserved = 0;
}

void irq_init(void)
{
    for (uint32_t v = 0; v < 256; v++)
        set_gate(v, irq_vector_stubs + v * IRQ_STUB_SIZE);
    set_gate(IRQ_VECTOR_TIMER, irq_timer_entry);
    struct idt_pointer idtr = {sizeof g_idt - 1, (uint64_t)(uintptr_t)g_idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));

    /* Both 8259s masked (guests/abi.h): unmasked, KVM's PIC would also deliver the PIT through
     * LVT0 as ExtINT with vector base 0, i.e. as #DE. LVT0 is masked below for the same reason. */
    outb(PIC_MASTER_DATA, 0xff);
    outb(PIC_SLAVE_DATA, 0xff);

    uint64_t apic_base = rdmsr(MSR_APIC_BASE);
    if ((apic_base & APIC_BASE_GLOBAL_ENABLE) == 0)
        wrmsr(MSR_APIC_BASE, apic_base | APIC_BASE_GLOBAL_ENABLE);
    lapic_write(LAPIC_TPR, 0);
    lapic_write(LAPIC_LVT_TIMER, LVT_MASKED);
    lapic_write(LAPIC_LVT_LINT0, LVT_MASKED);
    lapic_write(LAPIC_LVT_ERROR, LVT_MASKED);
    lapic_write(LAPIC_SVR, SVR_APIC_ENABLED | IRQ_VECTOR_SPURIOUS);
    uint32_t apic_id = lapic_read(LAPIC_ID) >> 24;

    uint32_t pins = ((ioapic_read(IOAPIC_REG_VERSION) >> 16) & 0xffu) + 1u;
    if (pins > IOAPIC_MAX_PINS)
        pins = IOAPIC_MAX_PINS;
    for (uint32_t pin = 0; pin < pins; pin++)
        ioapic_write(IOAPIC_REG_REDIRECTION(pin), REDIRECTION_MASKED);
    ioapic_route(COLOD_IRQ_PIT, IRQ_VECTOR_TIMER, apic_id);
    ioapic_route(COLOD_IRQ_COM1, IRQ_VECTOR_COM1, apic_id);

    outb(PIT_COMMAND, PIT_CHANNEL0_LOHI_RATE);
    outb(PIT_CHANNEL0, (uint8_t)(PIT_HZ_DIVISOR & 0xffu));
    outb(PIT_CHANNEL0, (uint8_t)(PIT_HZ_DIVISOR >> 8));
}

/* ---- panic ------------------------------------------------------------------------------ */

struct text {
    char buf[160];
    uint32_t len;
};

static void text_str(struct text *t, const char *s)
{
    while (*s != '\0' && t->len < sizeof t->buf)
        t->buf[t->len++] = *s++;
}

static void text_dec(struct text *t, uint64_t value)
{
    char digits[20];
    uint32_t n = 0;
    do {
        digits[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n != 0 && t->len < sizeof t->buf)
        t->buf[t->len++] = digits[--n];
}

static void text_hex(struct text *t, uint64_t value)
{
    text_str(t, "0x");
    int shift = 60;
    while (shift > 0 && ((value >> shift) & 0xfu) == 0)
        shift -= 4;
    for (; shift >= 0 && t->len < sizeof t->buf; shift -= 4)
        t->buf[t->len++] = "0123456789abcdef"[(value >> shift) & 0xfu];
}

static _Noreturn void power_off(uint32_t code)
{
    outl(COLOD_PORT_POWER, code);
    /* Not reached under colod. Elsewhere HLT with interrupts off stops the CPU for good. */
    for (;;)
        __asm__ volatile("cli; hlt");
}

static _Noreturn void panic_text(struct text *t, uint32_t code)
{
    if (t->len == sizeof t->buf)
        t->len--;
    t->buf[t->len++] = '\n';
    serial_write(t->buf, t->len);
    power_off(code);
}

_Noreturn void panic(const char *what, uint32_t code)
{
    cli();
    struct text t = {.len = 0};
    text_str(&t, "PANIC ");
    text_str(&t, what);
    panic_text(&t, code);
}

/* An exception or an interrupt nobody asked for: a bug in this guest or a broken machine. The
 * exit code is 128 + vector (as a shell reports signals), so it alone tells which. */
static _Noreturn void panic_vector(const struct irq_frame *frame)
{
    struct text t = {.len = 0};
    text_str(&t, "PANIC vector=");
    text_dec(&t, frame->vector);
    text_str(&t, " rip=");
    text_hex(&t, frame->rip);
    text_str(&t, " error=");
    text_hex(&t, frame->error_code);
    if (frame->vector == 14) {
        text_str(&t, " cr2=");
        text_hex(&t, read_cr2());
    }
    text_str(&t, " rsp=");
    text_hex(&t, frame->rsp);
    panic_text(&t, 128u + (uint32_t)frame->vector);
}

void irq_dispatch(struct irq_frame *frame)
{
    switch (frame->vector) {
    case IRQ_VECTOR_COM1:
        serial_irq();
        lapic_write(LAPIC_EOI, 0);
        return;
    case IRQ_VECTOR_SPURIOUS:
        return; /* the local APIC expects no EOI for its spurious vector */
    default:
        panic_vector(frame);
    }
}
