/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Entry of the guest build of program.c: the test sets RSP; output goes to port 0xe9. */
    .code64
    .section .text.start, "ax"
    .globl _start
_start:
    call program_main
1:  hlt
    jmp 1b

    .text
    .globl program_emit
program_emit:
    mov %edi, %eax
    outb %al, $0xe9
    ret
    .section .note.GNU-stack, "", @progbits
