/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* Identity mappings beyond the static low 4 GiB (BARs, high RAM). */
#ifndef TESTGUEST_MM_H
#define TESTGUEST_MM_H

#include "common.h"

/*
 * Identity-maps [addr, addr+size) write-back and user-accessible, with 1 GiB
 * pages when the CPU has them (CPUID 0x80000001 EDX[26]), else 2 MiB pages.
 * Fails the test if the range is beyond the physical address width.
 */
void map_range(u64 addr, u64 size);
/* Maps every e820 RAM range above 4 GiB (below is mapped statically). */
void map_high_ram(void);
/* Physical address bits from CPUID 0x80000008. */
u32 phys_addr_bits(void);

#endif
