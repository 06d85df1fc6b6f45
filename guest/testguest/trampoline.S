/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Application processor start-up. smp.c copies [ap_tramp_start,
 * ap_tramp_end) to AP_TRAMPOLINE (0x8000) and sends SIPI vector 0x08, so an
 * AP starts here in real mode with CS = 0x0800, IP = 0. It goes straight to
 * long mode (PAE, our page tables, EFER.LME, then PE and PG in one write),
 * takes a stack and calls ap_main().
 */
#include "layout.h"

	.section .rodata
	.code16
	.balign 16
	.globl ap_tramp_start
ap_tramp_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	ap_gdtr - ap_tramp_start
	ENABLE_LONG_MODE
	ljmpl	$KERNEL_CS, $ap_long64
	.balign 8
ap_gdtr:
	.word	gdt_limit
	.long	gdt
	.globl ap_tramp_end
ap_tramp_end:

	.text
	.code64
ap_long64:
	LOAD_KERNEL_DATA_SEGMENTS
	/* The n-th AP to arrive (n from 1) takes the stack ending at n * 4 KiB. */
	movl	$1, %eax
	lock xaddl %eax, ap_arrivals(%rip)
	incl	%eax
	cmpl	$MAX_CPUS, %eax
	jae	1f
	shll	$12, %eax		/* AP_STACK_SIZE */
	leaq	ap_stacks(%rip), %rsp
	addq	%rax, %rsp
	call	ap_main
1:	cli
	hlt
	jmp	1b

	.bss
	.balign 4
	.globl ap_arrivals
ap_arrivals:
	.long	0

	.section .noinit, "aw", @nobits
	.balign 4096
ap_stacks:
	.skip	AP_STACK_SIZE * MAX_CPUS
