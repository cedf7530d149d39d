/*
 * efird PVH shim: the PVH entry point and the way to long mode.
 *
 * QEMU (or Xen) finds the entry through the XEN_ELFNOTE_PHYS32_ENTRY note and jumps there
 * in 32-bit protected mode, paging off, with %ebx pointing at struct hvm_start_info.
 * We load Linux's boot GDT layout (0x08 32-bit code, 0x10 64-bit code, 0x18 data: the
 * kernel's EFI stub jumps through 0x08 when it switches to 5-level paging), identity-map
 * the first 4 GiB with 2 MiB pages, enter long mode and call shim_main(start_info).
 */
#define XEN_ELFNOTE_PHYS32_ENTRY 18

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                     /* namesz: "Xen\0" */
    .long 8                     /* descsz: a 64-bit address in an ELF64 file */
    .long XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.head, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov     %ebx, %esi
    lgdt    gdt_desc
    mov     $0x18, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %eax, %fs
    mov     %eax, %gs
    ljmp    $0x08, $1f
1:
    /* Zero .bss (the stack and the early page tables are there). */
    mov     $__bss_start, %edi
    mov     $__bss_end, %ecx
    sub     %edi, %ecx
    xor     %eax, %eax
    rep stosb
    mov     $__rt_bss_start, %edi
    mov     $__rt_bss_end, %ecx
    sub     %edi, %ecx
    rep stosb
    mov     $boot_stack_top, %esp

    /* PML4[0] -> PDPT; PDPT[0..3] -> four PDs of 2 MiB pages covering 0..4 GiB. */
    mov     $early_pdpt, %eax
    or      $0x3, %eax
    mov     %eax, early_pml4
    xor     %ecx, %ecx
2:  mov     %ecx, %eax
    shl     $12, %eax
    add     $early_pd, %eax
    or      $0x3, %eax
    mov     %eax, early_pdpt(,%ecx,8)
    inc     %ecx
    cmp     $4, %ecx
    jne     2b
    xor     %ecx, %ecx
3:  mov     %ecx, %eax
    shl     $21, %eax
    or      $0x83, %eax             /* present, writable, 2 MiB */
    mov     %ecx, %edx
    shr     $11, %edx               /* bits 32+ of the address: ecx * 2 MiB >> 32 */
    mov     %eax, early_pd(,%ecx,8)
    mov     %edx, early_pd+4(,%ecx,8)
    inc     %ecx
    cmp     $2048, %ecx
    jne     3b

    mov     %cr4, %eax
    or      $0x20, %eax             /* PAE */
    mov     %eax, %cr4
    mov     $early_pml4, %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     %cr0, %eax
    or      $0x80000001, %eax       /* PG | PE */
    mov     %eax, %cr0
    ljmp    $0x10, $long_mode

    .code64
long_mode:
    mov     $0x18, %eax
    mov     %eax, %ds
    mov     %eax, %es
    mov     %eax, %ss
    mov     %eax, %fs
    mov     %eax, %gs
    mov     $boot_stack_top, %rsp
    mov     %esi, %edi              /* hvm_start_info (zero-extended) */
    call    shim_main
4:  cli
    hlt
    jmp     4b

/* Exception stubs: push a dummy error code where the CPU pushes none, then the vector. */
    .macro EXC n
    .balign 16
exc\n:
    .if (\n == 8) || (\n >= 10 && \n <= 14) || (\n == 17) || (\n == 21)
    .else
    pushq   $0
    .endif
    pushq   $\n
    jmp     exc_common
    .endm
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    EXC \n
    .endr
exc_common:
    mov     (%rsp), %rdi            /* vector */
    mov     8(%rsp), %rsi           /* error code */
    mov     16(%rsp), %rdx          /* rip */
    mov     24(%rsp), %rcx          /* cs */
    mov     40(%rsp), %r8           /* rsp */
    mov     $boot_stack_top, %rsp   /* a known-good stack for the report */
    call    exception_report
5:  cli
    hlt
    jmp     5b

    .section .rodata
    .balign 8
    .globl exception_stubs
exception_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exc\n
    .endr

    .balign 16
    .globl shim_gdt
shim_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff        /* 0x08: 32-bit code */
    .quad 0x00af9a000000ffff        /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x18: data */
gdt_end:
gdt_desc:
    .word gdt_end - shim_gdt - 1
    .long shim_gdt

    .section .bss
    .balign 4096
    .globl early_pml4
early_pml4: .skip 4096
early_pdpt: .skip 4096
    .globl early_pd
early_pd:   .skip 4 * 4096
    .balign 16
boot_stack: .skip 256 * 1024
    .globl boot_stack_top
boot_stack_top:
