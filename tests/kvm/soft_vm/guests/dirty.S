# SPDX-License-Identifier: GPL-2.0-or-later
# Writes one quadword into each of rcx pages starting at rdi, rdx bytes apart, then reports
# with `out` to port 0x10.
.code64
start:
1:
    mov %rcx, (%rdi)
    add %rdx, %rdi
    dec %rcx
    jnz 1b
    out %al, $0x10
    jmp start
