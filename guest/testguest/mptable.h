/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* Intel MultiProcessor Specification 1.4 table: CPUs, IOAPIC, ISA IRQs. */
#ifndef TESTGUEST_MPTABLE_H
#define TESTGUEST_MPTABLE_H

#include "common.h"

struct mp_info {
	u64 mpf_addr;
	u32 lapic_addr;
	u32 ncpus;
	u8 apic_ids[MAX_CPUS];
	u8 bsp_apic_id;
	u32 nioapic;
	u32 ioapic_addr;	/* first IOAPIC */
	u8 ioapic_id;
	int isa_irq_pin[16];	/* ISA IRQ -> pin of the first IOAPIC, -1 if not listed */
};

/* Finds and checks the table; fails the test on a bad checksum. */
bool mptable_read(struct mp_info *out);

#endif
