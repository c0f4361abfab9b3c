/* #UD for UD2 (0x00), an SSE instruction (0x10), an x87 instruction (0x20), LOCK on a register
 * ALU op (0x30). The test starts at each offset in turn. */
    .code64
    ud2
    .org 0x10, 0x90
    addps %xmm0, %xmm1
    .org 0x20, 0x90
    fld1
    .org 0x30, 0x90
    .byte 0xf0, 0x01, 0xc3  /* lock add %eax, %ebx */
    .org 0x40, 0x90
