/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* Identity mappings beyond the static low 4 GiB (BARs, high RAM). */
#ifndef TESTGUEST_MM_H
#define TESTGUEST_MM_H

#include "common.h"

/*
 * Identity-maps [addr, addr+size) write-back and user-accessible, with 1 GiB
 * pages when the CPU has them (CPUID 0x80000001 EDX[26]), else 2 MiB pages.
 * Fails the test if the range is beyond the physical address width or
 * MAPPABLE_END. Access it through phys_to_virt().
 */
void map_range(u64 addr, u64 size);
/*
 * Where the CPU sees physical address pa once map_range() mapped it. With
 * 4-level paging virtual addresses are 48 bits, sign-extended from bit 47:
 * the page-table indices of pa are those of its canonical form, so an
 * address with bit 47 set is reached through the upper half.
 */
static inline u64 phys_to_virt(u64 pa)
{
	return (pa & (1ull << 47)) ? pa | 0xffff000000000000ull : pa;
}
/* The end of what 4-level paging can map this way. */
#define MAPPABLE_END	(1ull << 48)

/* Maps every e820 RAM range above 4 GiB (below is mapped statically). */
void map_high_ram(void);
/* Physical address bits from CPUID 0x80000008. */
u32 phys_addr_bits(void);

#endif
