/* An endless counting loop at offset 0 (interrupt and budget tests); at 0x10 STI then a store
 * then HLT (the STI shadow); at 0x30 MOV SS then a store then HLT (the MOV SS shadow); at 0x50
 * HLT then a store. */
    .code64
1:  incq 0x200000
    jmp 1b
    .org 0x10, 0x90
    sti
    movl $1, 0x200008
    hlt
    .org 0x30, 0x90
    mov $0x10, %eax
    mov %eax, %ss
    movl $2, 0x200010
    hlt
    .org 0x50, 0x90
    hlt
    movl $3, 0x200018
    hlt
