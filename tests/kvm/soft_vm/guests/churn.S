# SPDX-License-Identifier: GPL-2.0-or-later
# Writes an ever-growing counter into rsi pages starting at rdi (one quadword per page, at a
# position that moves with the counter), forever.
.code64
start:
    xor %rax, %rax
1:
    mov %rdi, %rbx
    mov %rsi, %rdx
2:
    inc %rax
    mov %rax, %r8
    and $0x1f8, %r8
    mov %rax, (%rbx,%r8)
    add $4096, %rbx
    dec %rdx
    jnz 2b
    jmp 1b
