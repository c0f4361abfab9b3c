/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The guest the QEMU COLO comparison runs under QEMU: a Multiboot (v1) image that QEMU's -kernel
 * loads directly, in 32-bit protected mode, paging off. It does what the embedded kvstore guest's
 * CHURN does, so that both sides of the comparison checkpoint the same work:
 *
 *   - N pages every 10 ms (the kvstore guest's tick): it increments one word in each of the next
 *     N pages of a scratch area (4 MiB up to the end of RAM), the cursor cycling, so a 100 ms
 *     checkpoint finds about 10 N dirty pages;
 *   - the rounds are paced by the TSC, calibrated against the PIT (100 Hz) at boot, and a wake-up
 *     runs every round that is due (at most 20): under QEMU COLO, which stops and starts the VM
 *     at every checkpoint, this guest received about a fifth of its PIT ticks on the nested KVM,
 *     and a tick-paced guest would have dirtied a fifth of N;
 *   - between rounds it halts until the next interrupt;
 *   - N comes from the last word of the kernel command line (QEMU's -append), 0 without one;
 *   - COM1 is its console: a line of decimal digits sets N and answers "OK", any other line
 *     answers "PONG" (the failover probe), and it writes "READY" once it runs.
 */

#define MULTIBOOT_MAGIC 0x1badb002
#define MULTIBOOT_FLAGS 0
#define COM1 0x3f8
#define PIC1 0x20
#define PIC2 0xa0
#define PIT_CH0 0x40
#define PIT_CMD 0x43
#define PIT_100HZ 11932
#define SCRATCH_START 0x400000
#define PAGE 4096
#define MAX_ROUNDS 20

    .text
    .code32
    .align 4
multiboot_header:
    .long MULTIBOOT_MAGIC, MULTIBOOT_FLAGS, -(MULTIBOOT_MAGIC + MULTIBOOT_FLAGS)

    .globl _start
_start:
    cli
    movl %eax, %ebp                   /* the loader's magic: %ax is about to be reused */
    lgdt gdt_descriptor
    ljmp $0x08, $1f
1:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    movl $stack_top, %esp

    /* The scratch area ends where RAM does (Multiboot info, mem_upper in KiB above 1 MiB). */
    movl $0x2000000, %edx             /* 32 MiB when the loader says nothing */
    cmpl $0x2badb002, %ebp
    jne 2f
    testl $1, (%ebx)
    jz 2f
    movl 8(%ebx), %edx
    shll $10, %edx
    addl $0x100000, %edx
2:  andl $~(PAGE - 1), %edx
    movl %edx, scratch_end
    movl $SCRATCH_START, cursor

    /* N from the command line's last word, when that word is a decimal number. */
    cmpl $0x2badb002, %ebp
    jne 23f
    testl $4, (%ebx)
    jz 23f
    movl 16(%ebx), %esi
    xorl %ecx, %ecx                   /* the word's value */
    xorl %edi, %edi                   /* 0: empty word, 1: digits, 2: something else */
20: lodsb
    testb %al, %al
    jz 22f
    cmpb $' ', %al
    jne 21f
    xorl %ecx, %ecx
    xorl %edi, %edi
    jmp 20b
21: cmpb $'0', %al
    jb 24f
    cmpb $'9', %al
    ja 24f
    cmpl $2, %edi
    je 20b
    movzbl %al, %eax
    subl $'0', %eax
    imull $10, %ecx
    addl %eax, %ecx
    movl $1, %edi
    jmp 20b
24: movl $2, %edi
    jmp 20b
22: cmpl $1, %edi
    jne 23f
    movl %ecx, %eax
    call set_pages
23:

    /* IDT: every vector returns at once, but for the timer (0x20) and COM1 (0x24). */
    xorl %ecx, %ecx
3:  movl $ignore_interrupt, %edx
    cmpl $0x20, %ecx
    jne 4f
    movl $timer_interrupt, %edx
4:  cmpl $0x24, %ecx
    jne 5f
    movl $serial_interrupt, %edx
5:  movl %edx, %eax
    andl $0xffff, %eax
    orl $0x00080000, %eax             /* selector 0x08 */
    movl %eax, idt(, %ecx, 8)
    andl $0xffff0000, %edx
    orl $0x8e00, %edx                 /* present, DPL 0, 32-bit interrupt gate */
    movl %edx, idt + 4(, %ecx, 8)
    incl %ecx
    cmpl $256, %ecx
    jne 3b
    lidt idt_descriptor

    /* PICs: IRQ 0-7 at vector 0x20, 8-15 at 0x28; only IRQ0 (PIT) and IRQ4 (COM1) unmasked. */
    movb $0x11, %al
    outb %al, $PIC1
    outb %al, $PIC2
    movb $0x20, %al
    outb %al, $PIC1 + 1
    movb $0x28, %al
    outb %al, $PIC2 + 1
    movb $0x04, %al
    outb %al, $PIC1 + 1
    movb $0x02, %al
    outb %al, $PIC2 + 1
    movb $0x01, %al
    outb %al, $PIC1 + 1
    outb %al, $PIC2 + 1
    movb $0xee, %al
    outb %al, $PIC1 + 1
    movb $0xff, %al
    outb %al, $PIC2 + 1

    /* PIT channel 0: rate generator at 100 Hz. */
    movb $0x34, %al
    outb %al, $PIT_CMD
    movb $(PIT_100HZ & 0xff), %al
    outb %al, $PIT_CH0
    movb $(PIT_100HZ >> 8), %al
    outb %al, $PIT_CH0

    /* COM1: 8N1, no FIFO, an interrupt on received data (OUT2 routes it to the PIC). */
    movw $COM1 + 3, %dx
    movb $0x03, %al
    outb %al, %dx
    movw $COM1 + 2, %dx
    xorb %al, %al
    outb %al, %dx
    movw $COM1 + 1, %dx
    movb $0x01, %al
    outb %al, %dx
    movw $COM1 + 4, %dx
    movb $0x0b, %al
    outb %al, %dx

    /* TSC per 10 ms: ten PIT ticks, from one tick's edge. */
    sti
    movl ticks, %eax
30: hlt
    cmpl ticks, %eax
    je 30b
    rdtsc
    movl %eax, last_tsc
    movl %edx, last_tsc + 4
    movl ticks, %ebx
    addl $10, %ebx
31: hlt
    cmpl ticks, %ebx
    ja 31b
    rdtsc
    subl last_tsc, %eax
    sbbl last_tsc + 4, %edx
    movl $10, %ecx
    divl %ecx
    movl %eax, tsc_per_round
    rdtsc
    movl %eax, last_tsc
    movl %edx, last_tsc + 4
    cli

    movl $msg_ready, %esi
    call print

main_loop:
    cli
    movw $COM1 + 5, %dx               /* line status: bit 0, a byte waits (0xff: no UART) */
    inb %dx, %al
    cmpb $0xff, %al
    je 6f
    testb $1, %al
    jz 6f
    movw $COM1, %dx
    inb %dx, %al
    call console_byte
    jmp main_loop
6:  rdtsc                             /* rounds due since last_tsc */
    subl last_tsc, %eax
    sbbl last_tsc + 4, %edx
    jnz 32f                           /* 2^32 cycles or more: far behind */
    cmpl tsc_per_round, %eax
    jb 7f
    divl tsc_per_round                /* %edx is 0 here */
    cmpl $MAX_ROUNDS, %eax
    ja 32f
    pushl %eax                        /* last_tsc moves by whole rounds: no drift */
    mull tsc_per_round
    addl %eax, last_tsc
    adcl %edx, last_tsc + 4
    popl %eax
    jmp 33f
32: rdtsc                             /* far behind (a long stop): MAX_ROUNDS, then from now */
    movl %eax, last_tsc
    movl %edx, last_tsc + 4
    movl $MAX_ROUNDS, %eax
33: call churn
    jmp main_loop
7:  sti                               /* sti's shadow covers hlt: no wake-up is lost */
    hlt
    jmp main_loop

/* %eax rounds: increments a word in each of the next %eax * `pages` pages of the scratch area. */
churn:
    movl pages, %ecx
    imull %eax, %ecx
    movl cursor, %edi
    testl %ecx, %ecx
    jz 9f
8:  incl (%edi)
    addl $PAGE, %edi
    cmpl scratch_end, %edi
    jb 10f
    movl $SCRATCH_START, %edi
10: decl %ecx
    jnz 8b
    movl %edi, cursor
9:  ret

/* A console byte in %al: digits accumulate, a newline ends the line. */
console_byte:
    cmpb $'\r', %al
    je 13f
    cmpb $'\n', %al
    je 11f
    incl line_length
    cmpb $'0', %al
    jb 12f
    cmpb $'9', %al
    ja 12f
    movzbl %al, %eax
    subl $'0', %eax
    movl number, %edx
    imull $10, %edx
    addl %eax, %edx
    movl %edx, number
    ret
12: movl $1, line_other
    ret
11: movl $msg_pong, %esi
    cmpl $0, line_length
    je 14f
    cmpl $0, line_other
    jne 14f
    movl number, %eax
    call set_pages
    movl $msg_ok, %esi
14: movl $0, number
    movl $0, line_length
    movl $0, line_other
    call print
13: ret

/* Pages a tick := %eax, never more than the scratch area holds. */
set_pages:
    movl scratch_end, %edx
    subl $SCRATCH_START, %edx
    shrl $12, %edx
    cmpl %edx, %eax
    jbe 15f
    movl %edx, %eax
15: movl %eax, pages
    ret

/* Writes the NUL-terminated string at %esi to COM1. */
print:
    movw $COM1 + 5, %dx
16: inb %dx, %al
    testb $0x20, %al
    jz 16b
    lodsb
    testb %al, %al
    jz 17f
    movw $COM1, %dx
    outb %al, %dx
    jmp print
17: ret

timer_interrupt:
    incl ticks
serial_interrupt:
    pushl %eax
    movb $0x20, %al
    outb %al, $PIC1
    popl %eax
ignore_interrupt:
    iret

    .data
    .align 8
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff          /* 0x08: flat 32-bit code */
    .quad 0x00cf92000000ffff          /* 0x10: flat data */
gdt_descriptor:
    .word gdt_descriptor - gdt - 1
    .long gdt
    .align 4
idt_descriptor:
    .word 256 * 8 - 1
    .long idt
msg_ready: .asciz "READY\n"
msg_ok:    .asciz "OK\n"
msg_pong:  .asciz "PONG\n"

    .bss
    .align 4096
last_tsc: .quad 0
idt: .space 256 * 8
ticks: .long 0
tsc_per_round: .long 0
pages: .long 0
cursor: .long 0
scratch_end: .long 0
number: .long 0
line_length: .long 0
line_other: .long 0
    .align 16
    .space 4096
stack_top:
