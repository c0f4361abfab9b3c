/* System instructions, one per entry point.
 *   0x00 WRMSR FS_BASE=0x200000 then read %fs:8    0x20 SWAPGS then RDMSR GS_BASE
 *   0x40 CPUID leaf in EAX                           0x50 RDMSR of ECX
 *   0x60 WRMSR of ECX with EDX:EAX                   0x70 MOV CR0 from RAX
 *   0x80 MOV CR8 from RAX, read back into RBX        0x90 MOV SS from AX
 *   0xa0 RDTSC                                       0xb0 far CALL through (RAX)
 *   0xc0 SYSCALL (LSTAR handler at 0x800 does SYSRETQ; user side then INT 0x80) */
    .code64
    mov $0xc0000100, %ecx
    mov $0x200000, %eax
    xor %edx, %edx
    wrmsr
    mov %fs:8, %rax
    hlt
    .org 0x20, 0x90
    swapgs
    mov $0xc0000101, %ecx
    rdmsr
    hlt
    .org 0x40, 0x90
    cpuid
    hlt
    .org 0x50, 0x90
    rdmsr
    hlt
    .org 0x60, 0x90
    wrmsr
    hlt
    .org 0x70, 0x90
    mov %rax, %cr0
    hlt
    .org 0x80, 0x90
    mov %rax, %cr8
    mov %cr8, %rbx
    hlt
    .org 0x90, 0x90
    mov %ax, %ss
    hlt
    .org 0xa0, 0x90
    rdtsc
    hlt
    .org 0xb0, 0x90
    lcall *(%rax)
    hlt
    .org 0xc0, 0x90
    mov $7, %eax
    syscall
    int $0x80
    .org 0x800, 0x90
    mov %rcx, 0x200100
    mov %r11, 0x200108
    add $1, %eax
    mov %eax, 0x200110
    sysretq
