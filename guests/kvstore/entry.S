/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Entry point and interrupt vector stubs of the kvstore guest.
 *
 * Entry state is the one guests/abi.h promises: long mode, CPL 0, interrupts off, identity map,
 * RDI = boot info address, RSP on the monitor's small boot stack.
 */

#define IRQ_STUB_SIZE 16
#define LAPIC_EOI_REGISTER 0xfee000b0

    .section .text.entry, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    movq %rdi, %r12                 /* boot info; rep stos below needs RDI */
    /* Clear .bss (the key slots live outside it and need no clearing, see kvstore.c). The
     * image sits below 2 GiB, so 32-bit absolute addresses are exact. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $3, %ecx                   /* the linker script keeps both ends 8-byte aligned */
    xorl %eax, %eax
    rep stosq
    movl $guest_stack_top, %esp     /* zero-extends: the stack is in .bss below 2 GiB */
    movq %r12, %rdi
    call kvstore_main
    /* kvstore_main never returns; if it did, HLT with IF = 0 ends the guest visibly. */
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

    .text

/*
 * 256 stubs, IRQ_STUB_SIZE bytes apart so irq.c finds stub v at irq_vector_stubs + 16 * v.
 * Each makes the frame uniform (a zero where the CPU pushes no error code), pushes its vector
 * and joins irq_common. Vectors with a CPU error code: 8, 10-14, 17, 21, 29, 30.
 */
    .balign IRQ_STUB_SIZE
    .globl irq_vector_stubs
irq_vector_stubs:
    .set vector, 0
    .rept 256
    .balign IRQ_STUB_SIZE
    .if !(vector == 8 || (vector >= 10 && vector <= 14) || vector == 17 || vector == 21 || vector == 29 || vector == 30)
    pushq $0
    .endif
    pushq $vector
    jmp irq_common
    .set vector, vector + 1
    .endr

/* Saves the registers a C function may clobber, calls irq_dispatch(frame), restores, returns.
 * The CPU aligned RSP to 16 before pushing its 5-word frame; 2 + 9 more words keep the call
 * 16-byte aligned. The callee-saved registers are preserved by the C code itself. */
irq_common:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq %rsp, %rdi
    cld
    call irq_dispatch
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $16, %rsp                  /* vector and error code */
    iretq

/* The timer interrupt, 100 times a second: kept to a few instructions because every one of
 * them is emulated on the test machines. CHURN runs in the main loop, not here. */
    .balign 16
    .globl irq_timer_entry
irq_timer_entry:
    pushq %rax
    incq g_ticks(%rip)
    movabsq $LAPIC_EOI_REGISTER, %rax
    movl $0, (%rax)
    popq %rax
    iretq

    .section .bss
    .balign 16
guest_stack:
    .skip 16384
guest_stack_top:

    .section .note.GNU-stack, "", @progbits
