/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Interrupt entry stubs and the switch to and from user mode (CPL3).
 *
 * isr_stubs: 256 stubs, 16 bytes apart, each pushing (error code, vector)
 *   and joining isr_common, which saves all registers and calls
 *   isr_dispatch(struct frame *).
 * msix_stubs: for vectors VEC_MSIX_BASE.., 32 bytes apart: the leanest
 *   possible handler (EOI, count, iretq); the ping-pong round trip is
 *   measured through these and compared with a bare-KVM floor program.
 * run_user(fn, arg, stack_top, rflags): runs fn(arg) at CPL3 and returns its
 *   result once fn returns (through a deliberate ud2, see user_exit).
 */
#include "layout.h"

/*
 * Every interrupt entry point lives in .text.entry, which link.ld places in
 * the first 64 KiB of the image: bits 16..63 of each handler address are
 * known at assembly time, so the IDT below is complete in the image and
 * costs nothing at boot (filling it at run time took ~8 ms of emulated
 * kernel-mode stores on PVM).
 */
	.section .text.entry, "ax"
	.altmacro
.macro isr_stub n
	.balign 16
	/* Exceptions that push an error code: 8, 10-14, 17, 21, 29, 30. */
	.if (\n == 8) || ((\n >= 10) && (\n <= 14)) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
	.else
	pushq	$0
	.endif
	pushq	$\n
	jmp	isr_common
.endm

	.balign 16
	.globl isr_stubs
isr_stubs:
	.set	vec, 0
	.rept	256
	isr_stub %vec
	.set	vec, vec + 1
	.endr

isr_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, %rdi
	cld
	call	isr_dispatch
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rbp
	popq	%rdi
	popq	%rsi
	popq	%rdx
	popq	%rcx
	popq	%rbx
	popq	%rax
	addq	$16, %rsp
	iretq

.macro msix_stub n
	.balign 32
	pushq	%rax
	movl	$LAPIC_EOI_ADDR, %eax
	movl	$0, (%rax)
	incl	irq_count + 4 * (VEC_MSIX_BASE + \n)
	popq	%rax
	iretq
.endm

	.balign 32
	.globl msix_stubs
msix_stubs:
	.set	v, 0
	.rept	VEC_MSIX_COUNT
	msix_stub %v
	.set	v, v + 1
	.endr

/* u64 run_user(u64 (*fn)(u64), u64 arg, u64 stack_top, u64 rflags) */
	.balign 16
	.globl run_user
run_user:
	pushq	%rbx
	pushq	%rbp
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, user_saved_rsp(%rip)
	/* fn returns into user_exit, from a stack aligned like after a call */
	andq	$-16, %rdx
	subq	$8, %rdx
	movq	$user_exit, (%rdx)
	pushq	$USER_DS
	pushq	%rdx
	orq	$2, %rcx
	pushq	%rcx
	pushq	$USER_CS
	pushq	%rdi
	movq	%rsi, %rdi
	iretq

	/*
	 * CPL3: hand the result to the kernel by faulting on purpose. On PVM
	 * neither int $n (#UD) nor syscall (lands at LSTAR still at CPL3)
	 * leaves user mode, but exceptions are delivered properly.
	 */
	.globl user_exit_ud2
user_exit:
	movq	%rax, %rdi
user_exit_ud2:
	ud2

	/*
	 * #UD entry: the ud2 at user_exit_ud2 from CPL3 means "user function
	 * done"; anything else is a real #UD for isr_common.
	 */
	.balign 16
	.globl ud_entry
ud_entry:
	pushq	$0
	pushq	$6
	cmpq	$USER_CS, 24(%rsp)
	jne	isr_common
	cmpq	$user_exit_ud2, 16(%rsp)
	jne	isr_common
	movq	%rdi, %rax
	movq	user_saved_rsp(%rip), %rsp
	popq	%r15
	popq	%r14
	popq	%r13
	popq	%r12
	popq	%rbp
	popq	%rbx
	ret

/* IDT gate: handler address, interrupt gate, DPL0. */
.macro gate handler
	.word	\handler - LOAD_ADDR
	.word	KERNEL_CS
	.byte	0, 0x8e
	.word	LOAD_ADDR >> 16
	.long	0, 0
.endm

.macro idt_entry n
	.if \n == 6
	gate	ud_entry
	.elseif (\n >= VEC_MSIX_BASE) && (\n < VEC_MSIX_BASE + VEC_MSIX_COUNT)
	gate	msix_stubs+32*(\n-VEC_MSIX_BASE)
	.else
	gate	isr_stubs+16*\n
	.endif
.endm

	.data
	.balign 16
	.globl idt
idt:
	.set	vec, 0
	.rept	256
	idt_entry %vec
	.set	vec, vec + 1
	.endr
	.globl idt_end
idt_end:

	.bss
	.balign 8
user_saved_rsp:
	.quad	0
