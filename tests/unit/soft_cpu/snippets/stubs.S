/* SPDX-License-Identifier: GPL-2.0-or-later */
/* IDT stubs of the test machine, loaded at 0x10000: vector v enters at 0x10000 + 16*v, stores
 * the vector, the six words above the stack pointer (the event's frame), CR2 and a count into
 * the record at 0x9000, and halts. */
    .code64
    .text
    .set v, 0
    .rept 256
    .balign 16
    movl $v, %eax
    jmp common
    .set v, v + 1
    .endr
    .balign 16
common:
    push %rbx
    movl %eax, 0x9000
    movl $0, 0x9004
    mov 8(%rsp), %rbx
    mov %rbx, 0x9008
    mov 16(%rsp), %rbx
    mov %rbx, 0x9010
    mov 24(%rsp), %rbx
    mov %rbx, 0x9018
    mov 32(%rsp), %rbx
    mov %rbx, 0x9020
    mov 40(%rsp), %rbx
    mov %rbx, 0x9028
    mov 48(%rsp), %rbx
    mov %rbx, 0x9030
    mov %cr2, %rbx
    mov %rbx, 0x9038
    incq 0x9040
    pop %rbx
1:  hlt
    jmp 1b
