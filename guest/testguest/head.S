/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Entry points, GDT, boot page tables and the PVH note.
 *
 *   load + 0x000  startup_32  32-bit boot protocol (ESI = boot_params)
 *   load + 0x200  startup_64  64-bit boot protocol (RSI = boot_params)
 *   pvh_start32               PVH (EBX = hvm_start_info), via the ELF note
 *
 * Every path switches to our own GDT and page tables at once, then calls
 * kmain(boot_kind, info_address) on the boot stack.
 */
#include "layout.h"
#include "pvh.h"

	.section .head.text, "ax"
	.code32
	.globl startup_32
startup_32:
	cli
	cld
	movl	$BOOT_LINUX32, %edi
	jmp	common32

	.org 0x200
	.code64
	.globl startup_64
startup_64:
	cli
	cld
	/* Linked to run at LOAD_ADDR only: refuse loudly anywhere else. */
	leaq	startup_64(%rip), %rax
	cmpq	$startup_64, %rax
	jne	wrong_load_address
	lgdt	gdt_ptr(%rip)
	LOAD_KERNEL_DATA_SEGMENTS
	leaq	boot_stack_top(%rip), %rsp
	pushq	$KERNEL_CS
	leaq	1f(%rip), %rax
	pushq	%rax
	lretq
1:	movl	$pml4, %eax
	movq	%rax, %cr3
	movq	%rsi, %r12
	movl	$BOOT_LINUX64, %r13d
	jmp	common64

	/* Print a FAIL line by hand (no stack, no C) and exit with 1. */
wrong_load_address:
	leaq	wrong_load_msg(%rip), %rsi
2:	movb	(%rsi), %cl
	testb	%cl, %cl
	jz	4f
	movw	$0x3fd, %dx
3:	inb	%dx, %al
	testb	$0x20, %al
	jz	3b
	movw	$0x3f8, %dx
	movb	%cl, %al
	outb	%al, %dx
	incq	%rsi
	jmp	2b
4:	movb	$1, %al
	outb	%al, $0xf4
	jmp	halt_forever

	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl	%ebx, %esi
	movl	$BOOT_PVH, %edi
common32:
	lgdt	gdt_ptr
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	ENABLE_LONG_MODE
	ljmp	$KERNEL_CS, $long_from32

	.code64
long_from32:
	LOAD_KERNEL_DATA_SEGMENTS
	movl	%esi, %r12d
	movl	%edi, %r13d
common64:
	leaq	boot_stack_top(%rip), %rsp
	/* Zero .bss (kept small: every store here is emulated on PVM). */
	leaq	_bss_start(%rip), %rdi
	leaq	_bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	movq	%r13, %rdi
	movq	%r12, %rsi
	call	kmain
	.globl halt_forever
halt_forever:
	cli
	hlt
	jmp	halt_forever

	.section .rodata
wrong_load_msg:
	.asciz "testguest: FAIL: not loaded at 0x100000\n"

	PVH_ENTRY_NOTE pvh_start32

	.data
	.balign 16
	.globl gdt
gdt:
	.quad	0			/* 0x00 null */
	.quad	0x00cf9b000000ffff	/* 0x08 kernel code, 32-bit */
	.quad	0x00af9b000000ffff	/* 0x10 kernel code, 64-bit */
	.quad	0x00cf93000000ffff	/* 0x18 kernel data */
	.quad	0x00cff3000000ffff	/* 0x20 user data */
	.quad	0x00affb000000ffff	/* 0x28 user code, 64-bit */
	.globl gdt_tss
gdt_tss:
	.quad	0, 0			/* 0x30 TSS, filled by cpu_init() */
gdt_end:
	.globl gdt_limit
	.set	gdt_limit, gdt_end - gdt - 1
	.balign 8
	.globl gdt_ptr
gdt_ptr:
	.word	gdt_end - gdt - 1
	.quad	gdt

/*
 * Static identity map of the low 4 GiB with 2 MiB pages (no CPUID check
 * needed, nothing to zero at boot): RAM, the 32-bit MMIO window, IOAPIC and
 * LAPIC. Everything is user-accessible so CPL3 code can touch RAM and BARs.
 * Anything above 4 GiB is mapped on demand by mm.c. Accessed/dirty are preset
 * so nobody has to write them back.
 */
#define PTE_TABLE	0x27	/* present, writable, user, accessed */
#define PTE_LARGE	0xe7	/* ... + dirty + page size */
	.section .pgtables, "aw"
	.balign 4096
	.globl pml4
pml4:
	.quad	pdpt_low + PTE_TABLE
	.fill	511, 8, 0
	.globl pdpt_low
pdpt_low:
	.quad	pd_low + 0x0000 + PTE_TABLE
	.quad	pd_low + 0x1000 + PTE_TABLE
	.quad	pd_low + 0x2000 + PTE_TABLE
	.quad	pd_low + 0x3000 + PTE_TABLE
	.fill	508, 8, 0
pd_low:
	.set	addr, 0
	.rept	2048
	.quad	addr + PTE_LARGE
	.set	addr, addr + 0x200000
	.endr

	.section .noinit, "aw", @nobits
	.balign 16
boot_stack:
	.skip	STACK_SIZE
	.globl boot_stack_top
boot_stack_top:
