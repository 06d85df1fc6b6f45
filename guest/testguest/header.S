/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * The real-mode setup block of the bzImage: one boot sector plus one setup
 * sector (setup_sects = 1) holding the Linux boot protocol header at 0x1f1
 * (Documentation/arch/x86/boot.rst). The payload that follows it is loaded at
 * 0x100000 and entered at +0x200 in 64-bit mode; nothing here runs unless a
 * loader jumps into real mode, in which case it halts.
 *
 * PAYLOAD_SIZE and IMAGE_END come from the Makefile (--defsym).
 */
#define SETUP_SECTS	1
#define LOAD_ADDR	0x100000

	.section .setup, "a"
	.code16
	.globl setup_start
setup_start:
	.org 0x1f1
hdr_setup_sects:	.byte SETUP_SECTS
hdr_root_flags:		.word 0
hdr_syssize:		.long (PAYLOAD_SIZE + 15) / 16
hdr_ram_size:		.word 0
hdr_vid_mode:		.word 0xffff		/* "normal" */
hdr_root_dev:		.word 0
hdr_boot_flag:		.word 0xaa55
	.org 0x200
hdr_jump:		.byte 0xeb, realmode_halt - hdr_header
hdr_header:		.ascii "HdrS"
hdr_version:		.word 0x020c		/* 2.12: xloadflags */
hdr_realmode_swtch:	.long 0
hdr_start_sys_seg:	.word 0x1000
hdr_kernel_version:	.word kernel_version_str - setup_start - 0x200
hdr_type_of_loader:	.byte 0
hdr_loadflags:		.byte 0x01		/* LOADED_HIGH */
hdr_setup_move_size:	.word 0x8000
hdr_code32_start:	.long LOAD_ADDR
hdr_ramdisk_image:	.long 0
hdr_ramdisk_size:	.long 0
hdr_bootsect_kludge:	.long 0
hdr_heap_end_ptr:	.word 0
hdr_ext_loader_ver:	.byte 0
hdr_ext_loader_type:	.byte 0
hdr_cmd_line_ptr:	.long 0
hdr_initrd_addr_max:	.long 0x7fffffff
hdr_kernel_alignment:	.long 0x200000
hdr_relocatable:	.byte 0			/* linked to run at 1 MiB only */
hdr_min_alignment:	.byte 21
hdr_xloadflags:		.word 0x0001		/* XLF_KERNEL_64 */
hdr_cmdline_size:	.long 4095
hdr_hardware_subarch:	.long 0
hdr_hw_subarch_data:	.quad 0
hdr_payload_offset:	.long 0
hdr_payload_length:	.long 0
hdr_setup_data:		.quad 0
hdr_pref_address:	.quad LOAD_ADDR
hdr_init_size:		.long IMAGE_END - LOAD_ADDR
hdr_handover_offset:	.long 0

kernel_version_str:	.asciz "testguest"

	/* Real-mode entry (only if a loader runs the setup code): stop. */
realmode_halt:
	cli
1:	hlt
	jmp 1b

	.org (SETUP_SECTS + 1) * 512
