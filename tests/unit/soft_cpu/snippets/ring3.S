/* Ring 3 code at offset 0 spins until the ring 0 handler at 0x800 (vector 0x30) sets a flag,
 * then raises INT 0x80 (a DPL 3 gate to the recording stub). The handler records its RSP and
 * the interrupted frame. */
    .code64
1:  cmpq $0, 0x200000
    je 1b
    int $0x80
    hlt
    .org 0x800, 0x90
    mov %rsp, 0x200100
    mov (%rsp), %rax
    mov %rax, 0x200108
    mov 8(%rsp), %rax
    mov %rax, 0x200110
    mov 24(%rsp), %rax
    mov %rax, 0x200118
    mov 32(%rsp), %rax
    mov %rax, 0x200120
    movq $1, 0x200000
    iretq
