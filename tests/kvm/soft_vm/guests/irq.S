# SPDX-License-Identifier: GPL-2.0-or-later
# Interrupt test guest.
#   rsi bit 0: PIT channel 0 at 100 Hz (mode 2, divisor 11932) through IOAPIC pin 0 → vector 0x20
#   rsi bit 1: LAPIC periodic timer, 1 ms (TMICT 62500, divide by 16) → vector 0x21
#   rsi bit 2: LAPIC TSC-deadline timer → vector 0x22, every rdx TSC ticks (each deadline is the
#              previous one plus rdx, so late interrupts are caught up)
#   IOAPIC pin 5 → vector 0x30 (for KVM_IRQ_LINE) is always routed.
#   rdi: 0 = sti; hlt loop, 1 = busy loop counting in LOOPS (interrupts on), 2 = cli; hlt loop
.include "common.inc"
.code64
start:
    mov %rdi, %r12
    mov %rsi, %r13
    mov %rdx, %r14
    IDT_GATE 0x20, pit_handler
    IDT_GATE 0x21, lapic_handler
    IDT_GATE 0x22, deadline_handler
    IDT_GATE 0x30, line_handler
    IDT_GATE 0xff, spurious_handler
    LOAD_IDT 0xfff
    # The PIC stays out of the way: everything through the IOAPIC.
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    # Software-enable the LAPIC, spurious vector 0xff.
    mov $LAPIC, %ebx
    movl $0x1ff, 0xf0(%rbx)
    mov $IOAPIC, %ecx
    # Pin 0 → 0x20 and pin 5 → 0x30: fixed, physical, edge, destination APIC 0.
    movl $0x10, (%rcx)
    movl $0x20, 0x10(%rcx)
    movl $0x11, (%rcx)
    movl $0, 0x10(%rcx)
    movl $0x1a, (%rcx)
    movl $0x30, 0x10(%rcx)
    movl $0x1b, (%rcx)
    movl $0, 0x10(%rcx)
    test $1, %r13
    jz 1f
    mov $0x34, %al
    out %al, $0x43
    mov $0x9c, %al
    out %al, $0x40
    mov $0x2e, %al
    out %al, $0x40
1:
    test $2, %r13
    jz 2f
    movl $0x3, 0x3e0(%rbx)
    movl $0x20021, 0x320(%rbx)
    movl $62500, 0x380(%rbx)
2:
    test $4, %r13
    jz 5f
    movl $0x40022, 0x320(%rbx)
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, DEADLINE
    call arm_deadline
5:
    movq $1, READY
    cmp $1, %r12
    je busy
    cmp $2, %r12
    je dead
idle:
    sti
    hlt
    jmp idle
busy:
    sti
3:
    incq LOOPS
    jmp 3b
dead:
    cli
4:
    hlt
    jmp 4b

pit_handler:
    incq PIT_TICKS
    LAPIC_EOI
    iretq
lapic_handler:
    incq LAPIC_TICKS
    LAPIC_EOI
    iretq
deadline_handler:
    incq DEADLINE_TICKS
    push %rbx
    call arm_deadline
    pop %rbx
    LAPIC_EOI
    iretq
# DEADLINE += r14; IA32_TSC_DEADLINE = DEADLINE. Clobbers nothing but flags.
arm_deadline:
    push %rax
    push %rcx
    push %rdx
    mov DEADLINE, %rax
    add %r14, %rax
    mov %rax, DEADLINE
    mov %rax, %rdx
    shr $32, %rdx
    mov $0x6e0, %ecx
    wrmsr
    pop %rdx
    pop %rcx
    pop %rax
    ret
line_handler:
    incq LINE_IRQS
    LAPIC_EOI
    iretq
spurious_handler:
    iretq
