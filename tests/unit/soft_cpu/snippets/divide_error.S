/* #DE through the IDT: the frame's RIP is the faulting DIV (at offset 0x10). */
    .code64
    xor %ecx, %ecx
    mov $100, %eax
    xor %edx, %edx
    .org 0x10, 0x90
    div %ecx
    hlt
