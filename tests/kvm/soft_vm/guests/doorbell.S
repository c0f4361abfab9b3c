# SPDX-License-Identifier: GPL-2.0-or-later
# Writes that an ioeventfd may take (KVM_IOEVENTFD) and writes beside them: the host checks
# which of them exit.
.include "common.inc"
.code64
start:
    mov $0xd0000050, %ebx
    movl $1, (%rbx)          # the doorbell's value and width
    movl $7, (%rbx)          # another value
    movw $1, (%rbx)          # another width
    mov $1, %eax
    mov $0x90, %dx
    out %eax, %dx            # the port doorbell
    out %al, $0x86           # the end of a round
    jmp start
