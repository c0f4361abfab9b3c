/* RDI = iterations. 0x00: LOCK XADD on 0x200000; 0x40: LOCK CMPXCHG loop on 0x200008;
 * 0x80: LOCK INCQ on 0x200010. */
    .code64
    mov $1, %eax
1:  mov $1, %eax
    lock xadd %rax, 0x200000
    dec %rdi
    jnz 1b
    hlt
    .org 0x40, 0x90
1:  mov 0x200008, %rax
2:  lea 1(%rax), %rcx
    lock cmpxchg %rcx, 0x200008
    jne 2b
    dec %rdi
    jnz 1b
    hlt
    .org 0x80, 0x90
1:  lock incq 0x200010
    dec %rdi
    jnz 1b
    hlt
