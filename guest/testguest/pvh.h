/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY), for assembly: the ELF
 * note by which QEMU and ivvmm find a PVH kernel's 32-bit entry. They read
 * an 8-byte address after the 4-aligned name.
 */
#ifndef PVH_H
#define PVH_H

	.macro PVH_ENTRY_NOTE entry
	.pushsection .note.Xen, "a", @note
	.balign 4
	.long	4
	.long	8
	.long	18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz	"Xen"
	.balign 4
	.quad	\entry
	.balign 4
	.popsection
	.endm

#endif
