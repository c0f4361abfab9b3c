/* Interrupt handler at 0x800 counts and returns with IRETQ; the main code enables interrupts
 * and waits for three of them, then halts. */
    .code64
    sti
1:  cmpq $3, 0x200000
    jne 1b
    cli
    hlt
    .org 0x800, 0x90
    incq 0x200000
    iretq
