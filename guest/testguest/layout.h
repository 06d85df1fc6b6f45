/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Constants shared by assembly and C: segment selectors, boot kinds, control
 * register bits, fixed guest-physical addresses.
 */
#ifndef TESTGUEST_LAYOUT_H
#define TESTGUEST_LAYOUT_H

#define LOAD_ADDR	0x100000

/* GDT layout (head.S). 0x10/0x18 match Linux's __BOOT_CS/__BOOT_DS. */
#define KERNEL_CS32	0x08
#define KERNEL_CS	0x10
#define KERNEL_DS	0x18
#define USER_DS		0x23	/* 0x20 | RPL 3 */
#define USER_CS		0x2b	/* 0x28 | RPL 3 */
#define TSS_SEL		0x30

/* How we were entered (first argument of kmain). */
#define BOOT_LINUX64	1	/* 64-bit boot protocol: RSI = boot_params */
#define BOOT_LINUX32	2	/* 32-bit boot protocol: ESI = boot_params */
#define BOOT_PVH	3	/* PVH: EBX = hvm_start_info */

#define CR0_PE		0x00000001
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

/* Real-mode trampoline for application processors (SIPI vector 0x08). */
#define AP_TRAMPOLINE	0x8000

/* Interrupt vectors. */
#define VEC_SERIAL	0x30
#define VEC_TIMER	0x31
#define VEC_MSIX_BASE	0x40	/* MSI-X entry v uses vector 0x40 + v */
#define VEC_MSIX_COUNT	32
#define VEC_SPURIOUS	0xff

#define LAPIC_BASE	0xfee00000
#define LAPIC_EOI_ADDR	0xfee000b0

#define STACK_SIZE	16384
#define AP_STACK_SIZE	4096
#define MAX_CPUS	32

#ifdef __ASSEMBLER__
/*
 * Paging off, in 32-bit protected or real mode, interrupts off: turn on PAE,
 * load our page tables, set EFER.LME and enable paging. The caller's far
 * jump to a 64-bit code segment then enters long mode. Clobbers eax, ecx,
 * edx.
 */
.macro ENABLE_LONG_MODE
	movl	%cr4, %eax
	orl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	orl	$(CR0_PG | CR0_PE), %eax
	movl	%eax, %cr0
.endm

/* In long mode: kernel data segments in ds/es/ss, null fs/gs. Clobbers eax. */
.macro LOAD_KERNEL_DATA_SEGMENTS
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
.endm
#endif

#endif
