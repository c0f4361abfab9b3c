# SPDX-License-Identifier: GPL-2.0-or-later
# Two vCPUs. rdi = 1: the receiver (APIC 1) halts with interrupts on and counts IPI vector 0x40
# in IPI_COUNT. rdi = 0: the sender (APIC 0) sends rsi fixed IPIs to APIC 1, each after the
# previous one was counted, then reports with `out` to port 0x10.
.include "common.inc"
.set IPI_COUNT, 0x9040
.code64
start:
    mov $LAPIC, %ebx
    movl $0x1ff, 0xf0(%rbx)
    test %rdi, %rdi
    jz sender
receiver:
    IDT_GATE 0x40, ipi_handler
    IDT_GATE 0xff, spurious_handler
    LOAD_IDT 0xfff
    movq $1, READY
1:
    sti
    hlt
    jmp 1b
sender:
    xor %rcx, %rcx
2:
    cmp %rsi, %rcx
    je 4f
    movl $0x01000000, 0x310(%rbx)
    movl $0x00004040, 0x300(%rbx)
    inc %rcx
3:
    pause
    cmp IPI_COUNT, %rcx
    jne 3b
    jmp 2b
4:
    out %al, $0x10
    jmp 4b

ipi_handler:
    incq IPI_COUNT
    LAPIC_EOI
    iretq
spurious_handler:
    iretq
