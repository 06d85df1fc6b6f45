// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// On-demand identity mapping. head.S maps the low 4 GiB statically; BARs in
// the 64-bit window (anywhere below 2^48: see phys_to_virt) get mapped here
// when a test touches them. Page-table pages come from a pool and are zeroed
// one by one when taken, so boot never pays for them.
#include "mm.h"

#define PT_POOL_PAGES	32
#define PTE_P		0x1ull
#define PTE_TABLE	0x27ull	/* present, writable, user, accessed */
#define PTE_LARGE	0xe7ull	/* ... + dirty + page size */
#define GIB		(1ull << 30)
#define MIB2		(1ull << 21)
#define ADDR_MASK	0x000ffffffffff000ull

extern u64 pml4[512];

static u8 pt_pool[PT_POOL_PAGES][4096] __attribute__((aligned(4096))) NOINIT;
static u32 pt_used;
static int has_1g = -1;
static u32 pa_bits;

u32 phys_addr_bits(void)
{
	if (!pa_bits) {
		u32 a, b, c, d;
		cpuid(0x80000000, 0, &a, &b, &c, &d);
		pa_bits = 36;
		if (a >= 0x80000008) {
			cpuid(0x80000008, 0, &a, &b, &c, &d);
			pa_bits = a & 0xff;
		}
	}
	return pa_bits;
}

static bool cpu_has_1g_pages(void)
{
	if (has_1g < 0) {
		u32 a, b, c, d;
		cpuid(0x80000000, 0, &a, &b, &c, &d);
		has_1g = 0;
		if (a >= 0x80000001) {
			cpuid(0x80000001, 0, &a, &b, &c, &d);
			has_1g = (d >> 26) & 1;
		}
	}
	return has_1g;
}

static u64 *next_table(u64 *entry)
{
	if (*entry & PTE_P)
		return (u64 *)(*entry & ADDR_MASK);
	if (pt_used >= PT_POOL_PAGES)
		fail("page-table pool exhausted (%u pages)", PT_POOL_PAGES);
	u64 *t = (u64 *)pt_pool[pt_used++];
	memset(t, 0, 4096);
	*entry = (u64)t | PTE_TABLE;
	return t;
}

void map_range(u64 addr, u64 size)
{
	if (!size)
		return;
	u64 end = addr + size;
	if (end < addr || end > (1ull << phys_addr_bits()))
		fail("cannot map 0x%lx+0x%lx: beyond %u physical address bits", addr, size,
		     phys_addr_bits());
	if (end > MAPPABLE_END)
		fail("cannot map 0x%lx+0x%lx: 4-level paging reaches 2^48", addr, size);
	if (end <= 4 * GIB)
		return;	/* static map in head.S */
	if (addr < 4 * GIB)
		addr = 4 * GIB;
	bool big = cpu_has_1g_pages();
	for (u64 a = addr & ~(MIB2 - 1); a < end;) {
		u64 *pdpt = next_table(&pml4[(a >> 39) & 511]);
		u64 *pdpte = &pdpt[(a >> 30) & 511];
		if (big) {
			*pdpte = (a & ~(GIB - 1)) | PTE_LARGE;
			a = (a & ~(GIB - 1)) + GIB;
			continue;
		}
		if ((*pdpte & PTE_P) && (*pdpte & 0x80))
			fail("mm: 1 GiB page found without CPU support");
		u64 *pd = next_table(pdpte);
		pd[(a >> 21) & 511] = a | PTE_LARGE;
		a += MIB2;
	}
	reload_cr3();
}

void map_high_ram(void)
{
	for (u32 i = 0; i < boot.e820_count; i++) {
		const struct e820_entry *e = &boot.e820[i];
		if (e->type == E820_RAM && e->addr + e->size > 4 * GIB)
			map_range(e->addr, e->size);
	}
}
