/* Memory accesses for the paging tests, one per entry point; RDI holds the address.
 *   0x00 read  0x10 write  0x20 jump to RDI  0x30 8-byte write at RDI (page-crossing tests)
 *   0x40 8-byte read into RAX  0x50 read then write (A then D)  0x60 INVLPG (%rdi) then read
 *   0x70 reload CR3 then read */
    .code64
    mov (%rdi), %eax
    hlt
    .org 0x10, 0x90
    movl $0x11223344, (%rdi)
    hlt
    .org 0x20, 0x90
    jmp *%rdi
    .org 0x30, 0x90
    movabs $0x8877665544332211, %rax
    mov %rax, (%rdi)
    hlt
    .org 0x40, 0x90
    mov (%rdi), %rax
    hlt
    .org 0x50, 0x90
    mov (%rdi), %eax
    hlt
    movl $5, (%rdi)
    hlt
    .org 0x60, 0x90
    invlpg (%rdi)
    mov (%rdi), %eax
    hlt
    .org 0x70, 0x90
    mov %cr3, %rax
    mov %rax, %cr3
    mov (%rdi), %eax
    hlt
