// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Finds the MP floating pointer ("_MP_") in the EBDA / last KiB of base
// memory or in the BIOS area 0xf0000..0xfffff, checks checksums and reads
// the processor, IOAPIC and I/O interrupt entries.
#include "mptable.h"

static u8 sum(u64 addr, u32 len)
{
	u8 s = 0;
	for (u32 i = 0; i < len; i++)
		s += *(volatile u8 *)(addr + i);
	return s;
}

static u64 scan(u64 start, u64 len)
{
	for (u64 a = start; a + 16 <= start + len; a += 16)
		if (*(volatile u32 *)a == 0x5f504d5f /* "_MP_" */ && sum(a, 16) == 0)
			return a;
	return 0;
}

bool mptable_read(struct mp_info *mp)
{
	memset(mp, 0, sizeof(*mp));
	for (int i = 0; i < 16; i++)
		mp->isa_irq_pin[i] = -1;
	u64 ebda = (u64)mmio_read16(0x40e) << 4;	/* BDA: EBDA segment */
	u64 mpf = 0;
	if (ebda >= 0x80000 && ebda < 0xa0000)
		mpf = scan(ebda, 1024);
	if (!mpf)
		mpf = scan(0x9fc00, 1024);
	if (!mpf)
		mpf = scan(0xf0000, 0x10000);
	if (!mpf)
		return false;
	mp->mpf_addr = mpf;
	u64 cfg = *(volatile u32 *)(mpf + 4);
	if (!cfg)
		fail("mptable: no configuration table (default configurations unsupported)");
	if (*(volatile u32 *)cfg != 0x504d4350 /* "PCMP" */)
		fail("mptable: bad PCMP signature at 0x%lx", cfg);
	u16 len = *(volatile u16 *)(cfg + 4);
	if (sum(cfg, len) != 0)
		fail("mptable: configuration table checksum bad");
	mp->lapic_addr = *(volatile u32 *)(cfg + 36);
	u16 count = *(volatile u16 *)(cfg + 34);
	u64 p = cfg + 44, end = cfg + len;
	u8 isa_bus = 0xff;
	for (u16 i = 0; i < count && p < end; i++) {
		u8 type = *(volatile u8 *)p;
		switch (type) {
		case 0: {	/* processor */
			u8 id = *(volatile u8 *)(p + 1), flags = *(volatile u8 *)(p + 3);
			if ((flags & 1) && mp->ncpus < MAX_CPUS)
				mp->apic_ids[mp->ncpus++] = id;
			if (flags & 2)
				mp->bsp_apic_id = id;
			p += 20;
			break;
		}
		case 1:	/* bus */
			if (!memcmp((const void *)(p + 2), "ISA", 3))
				isa_bus = *(volatile u8 *)(p + 1);
			p += 8;
			break;
		case 2:	/* IOAPIC */
			if (*(volatile u8 *)(p + 3) & 1) {
				if (!mp->nioapic) {
					mp->ioapic_id = *(volatile u8 *)(p + 1);
					mp->ioapic_addr = *(volatile u32 *)(p + 4);
				}
				mp->nioapic++;
			}
			p += 8;
			break;
		case 3: {	/* I/O interrupt assignment */
			u8 bus = *(volatile u8 *)(p + 4), irq = *(volatile u8 *)(p + 5);
			u8 apic = *(volatile u8 *)(p + 6), pin = *(volatile u8 *)(p + 7);
			if (bus == isa_bus && irq < 16 && apic == mp->ioapic_id)
				mp->isa_irq_pin[irq] = pin;
			p += 8;
			break;
		}
		case 4:	/* local interrupt assignment */
			p += 8;
			break;
		default:
			fail("mptable: unknown entry type %u", type);
		}
	}
	return true;
}
