/* Port and MMIO exits.
 *   0x00 OUT of AL to port 0xf8              0x10 IN AL from port 0xf8, store AL
 *   0x20 IN EAX from DX=0x40, store EAX      0x30 MMIO read of 0x40000000, store EAX
 *   0x40 MMIO write 0x1234 to 0x40000010      0x50 add to MMIO (read then write)
 *   0x60 rep outsb of 3 bytes from 0x200200 to port 0x3f8 */
    .code64
    mov $0x41, %al
    out %al, $0xf8
    hlt
    .org 0x10, 0x90
    in $0xf8, %al
    mov %al, 0x200000
    hlt
    .org 0x20, 0x90
    mov $0x40, %dx
    in %dx, %eax
    mov %eax, 0x200004
    hlt
    .org 0x30, 0x90
    mov 0x40000000, %eax
    mov %eax, 0x200008
    hlt
    .org 0x40, 0x90
    movl $0x1234, 0x40000010
    hlt
    .org 0x50, 0x90
    addl $5, 0x40000020
    hlt
    .org 0x60, 0x90
    mov $0x3f8, %dx
    mov $0x200200, %esi
    mov $3, %ecx
    rep outsb
    hlt
