/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * ACPI tables as an OS finds them: the RSDP through the boot protocol
 * (boot_params acpi_rsdp_addr, PVH rsdp_paddr) or by scanning the EBDA and
 * 0xe0000..0xfffff, then XSDT -> FADT, MADT and the FADT's DSDT.
 */
#ifndef TESTGUEST_ACPI_H
#define TESTGUEST_ACPI_H

#include "common.h"

/* A FADT generic address (register). */
struct acpi_gas {
	u8 space;	/* 0 memory, 1 I/O */
	u8 width;	/* bits */
	u64 addr;
};
#define ACPI_GAS_IO	1

#define FADT_RESET_REG_SUP	(1u << 10)
#define FADT_HW_REDUCED		(1u << 20)

struct acpi_info {
	u64 rsdp;
	const char *via;	/* "bootparams", "pvh" or "scan" */
	u8 rsdp_rev;
	u64 xsdt;
	u32 ntables;		/* XSDT entries */
	u64 fadt, madt, dsdt;
	/* MADT */
	u32 lapic_addr;
	u32 ncpus;		/* enabled local APICs */
	u8 apic_ids[MAX_CPUS];
	u32 nioapic;
	u32 ioapic_addr;
	u8 ioapic_id;
	u32 noverrides;
	int isa_gsi[16];	/* ISA IRQ -> GSI from the overrides, -1 if none */
	int nmi_lint;		/* LINT of the all-processor NMI entry, -1 if none */
	/* FADT */
	u32 fadt_flags;
	struct acpi_gas reset, sleep_control, sleep_status;
	u8 reset_value;
	/* DSDT */
	u32 dsdt_len;
	bool pnp0a03, pnp0501;
	int s5_slp_typ;		/* SLP_TYPa of \_S5, -1 if none */
	bool has_m32, has_m64;
	u64 m32_min, m32_max, m64_min, m64_max;	/* PCI0 _CRS windows (inclusive) */
};

/*
 * Finds and parses the tables; fails the test on a bad signature, length
 * or checksum. With `rsdp=scan` on the command line the boot protocol's
 * pointer is ignored and the BIOS areas are scanned. Returns false if no
 * RSDP was found at all.
 */
bool acpi_read(struct acpi_info *a);

/*
 * A free address for a memory BAR of `size` (a power of two) inside one of
 * the DSDT windows: the 64-bit one when `is64`, else the 32-bit one; the
 * lowest (`high` false) or highest aligned range that overlaps no memory
 * BAR of any function on bus 0, below MAPPABLE_END (so this guest can use
 * it). Fails the test if there is none.
 */
u64 acpi_free_bar_range(const struct acpi_info *a, bool is64, u64 size, bool high);

#endif
