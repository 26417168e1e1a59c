/* Boot-sector probe: real mode -> long mode, writing progress marks to COM1. */
.code16
.globl _start
_start:
  cli
  xor %ax, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  mov $0x7c00, %sp
  mov $0x3f8, %dx
  mov $'R', %al
  out %al, %dx
  /* page tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD, 2 MiB pages) */
  mov $0x1000, %di
  mov $0x3000, %cx
  xor %ax, %ax
  rep stosb
  movl $0x2003, 0x1000
  movl $0x3003, 0x2000
  mov $0x3000, %di
  xor %ebx, %ebx
  mov $64, %cx
1: mov %ebx, %eax
  or $0x83, %eax
  mov %eax, (%di)
  add $0x200000, %ebx
  add $8, %di
  loop 1b
  mov %cr4, %eax
  or $0x20, %eax
  mov %eax, %cr4
  mov $0x1000, %eax
  mov %eax, %cr3
  mov $0xC0000080, %ecx
  rdmsr
  or $0x100, %eax
  wrmsr
  lgdt gdtr
  mov %cr0, %eax
  or $0x80000001, %eax
  mov %eax, %cr0
  ljmp $0x08, $lm
.code64
lm:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %ss
  mov $0x3f8, %dx
  mov $'L', %al
  out %al, %dx
  /* touch 64 MiB above 1 MiB, as an unpacking kernel would */
  mov $0x100000, %rdi
  mov $0x4000000, %rcx
2: movq %rdi, (%rdi)
  add $4096, %rdi
  sub $4096, %rcx
  jnz 2b
  mov $'M', %al
  out %al, %dx
  mov $'\n', %al
  out %al, %dx
3: hlt
  jmp 3b
.p2align 3
gdt:
  .quad 0
  .quad 0x00209a0000000000
  .quad 0x0000920000000000
gdtr:
  .word gdtr - gdt - 1
  .long gdt
.org 510
.word 0xaa55
