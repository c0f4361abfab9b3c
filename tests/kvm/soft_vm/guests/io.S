# SPDX-License-Identifier: GPL-2.0-or-later
# Port and MMIO exits: the host checks each exit and supplies the IN and MMIO-read data.
.include "common.inc"
.code64
start:
    mov $0xab, %al
    out %al, $0x80
    mov $0x1234, %ax
    mov $0x82, %dx
    out %ax, %dx
    in $0x84, %eax
    mov %eax, IO_IN_RESULT
    mov $0xd0000000, %ebx
    mov (%rbx), %rax
    mov %rax, MMIO_RESULT
    movl $0xcafef00d, 8(%rbx)
    out %al, $0x86
    jmp start
