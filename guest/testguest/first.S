/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The `first` image (build/first.bzImage, build/first.pvh.elf): a guest
 * whose first instructions write 'F' to COM1's data port, then a newline,
 * then leave through the debug exit port with status 0. `scripts/bench
 * boot` times ivvmm from process start to that byte against
 * examples/boot_floor.rs, a bare KVM program running the same three
 * instructions, so the difference is what the VMM costs before the
 * guest's first instruction.
 *
 * The same bytes run in 32-bit and 64-bit mode (no stack, no memory), so
 * every entry is this one sequence:
 *   load + 0x000  32-bit boot protocol
 *   load + 0x200  64-bit boot protocol (ivvmm's bzImage path)
 *   PVH entry     via the ELF note (ivvmm's PVH path)
 */
#include "pvh.h"

	.macro FIRST_BYTE
	movw	$0x3f8, %dx
	movb	$'F', %al
	outb	%al, %dx
	movb	$'\n', %al
	outb	%al, %dx
	movw	$0xf4, %dx
	xorb	%al, %al
	outb	%al, %dx
1:	hlt
	jmp	1b
	.endm

	.section .head.text, "ax"
	.code32
	.globl startup_32
startup_32:
	FIRST_BYTE

	.org 0x200
	.code64
	.globl startup_64
startup_64:
	FIRST_BYTE

	.code32
	.globl pvh_start32
pvh_start32:
	FIRST_BYTE

	PVH_ENTRY_NOTE pvh_start32
