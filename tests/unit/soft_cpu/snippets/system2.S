/* More system instructions, one per entry point.
 *   0x00 RDFSBASE RAX; WRGSBASE RBX          0x10 XGETBV (ECX=0) into EDX:EAX
 *   0x20 XSETBV from EDX:EAX                 0x30 SGDT / SIDT to 0x200000 / 0x200010
 *   0x50 LGDT from 0x200020                  0x60 LTR AX; STR BX
 *   0x70 POPF of RAX (ring 3 test)           0x80 CLI
 *   0x90 ENTER $32, $0 ; LEAVE               0xa0 ENTER $16, $2 (nested frame)
 *   0xc0 PUSH FS; POP GS                     0xd0 PUSHFQ; POP RAX */
    .code64
    rdfsbase %rax
    wrgsbase %rbx
    hlt
    .org 0x10, 0x90
    xgetbv
    hlt
    .org 0x20, 0x90
    xsetbv
    hlt
    .org 0x30, 0x90
    sgdt 0x200000
    sidt 0x200010
    hlt
    .org 0x50, 0x90
    lgdt 0x200020
    hlt
    .org 0x60, 0x90
    ltr %ax
    str %rbx
    hlt
    .org 0x70, 0x90
    push %rax
    popfq
    int $0x80
    .org 0x80, 0x90
    cli
    int $0x80
    .org 0x90, 0x90
    mov %rsp, %rbx
    enter $32, $0
    mov %rsp, %rcx
    mov %rbp, %rdx
    leave
    hlt
    .org 0xa0, 0x90
    mov $0x7000, %rbp
    enter $16, $2
    hlt
    .org 0xc0, 0x90
    push %fs
    pop %gs
    hlt
    .org 0xd0, 0x90
    pushfq
    pop %rax
    hlt
