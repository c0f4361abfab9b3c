/* String instructions. 0x00: overlapping forward rep movsb (dst = src + 1) over 100 bytes at
 * 0x200000; 0x20: rep stosq of 600 quadwords at 0x201000 (crosses pages); 0x40: repne scasb
 * for 'x' at 0x203000; 0x60: std; rep movsb backwards; cld. 0x80: repe cmpsb; 0xa0: rep
 * stosb of 100000 bytes at 0x210000 (long enough to be split into several steps) */
    .code64
    mov $0x200000, %esi
    mov $0x200001, %edi
    mov $100, %ecx
    rep movsb
    hlt
    .org 0x20, 0x90
    mov $0x201000, %edi
    mov $600, %ecx
    movabs $0x0123456789abcdef, %rax
    rep stosq
    hlt
    .org 0x40, 0x90
    mov $0x203000, %edi
    mov $0x1000, %ecx
    mov $'x', %al
    repne scasb
    hlt
    .org 0x60, 0x90
    std
    mov $0x204009, %esi
    mov $0x205009, %edi
    mov $10, %ecx
    rep movsb
    cld
    hlt
    .org 0x80, 0x90
    mov $0x206000, %esi
    mov $0x207000, %edi
    mov $64, %ecx
    repe cmpsb
    hlt
    .org 0xa0, 0x90
    mov $0x210000, %edi
    mov $100000, %ecx
    mov $0xee, %eax
    rep stosb
    hlt
