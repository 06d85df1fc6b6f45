// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ivshmem-regs: BAR0 register semantics in plain mode, as QEMU implements
// them (QEMU is the reference; see README for where that differs from a
// naive reading of the spec).
#include "ivshmem.h"
#include "tests.h"

static bool regs_one(const struct ivshmem_dev *d, int idx, const char *pos_param)
{
	u64 r = d->bar[0].addr;
	bool ok = true;
	kprintf("regs dev=%d bdf=00:%02x.%x bar0=0x%lx\n", idx, d->f.dev, d->f.fn, r);

	mmio_write32(r + REG_INTRMASK, 0xdeadbeef);
	ok &= check("intrmask_rw", mmio_read32(r + REG_INTRMASK), 0xdeadbeef);
	mmio_write32(r + REG_INTRMASK, 0);
	ok &= check("intrmask_zero", mmio_read32(r + REG_INTRMASK), 0);

	mmio_write32(r + REG_INTRSTATUS, 0x12345678);
	ok &= check("intrstatus_rw", mmio_read32(r + REG_INTRSTATUS), 0x12345678);
	ok &= check("intrstatus_read_clears", mmio_read32(r + REG_INTRSTATUS), 0);

	u32 pos = mmio_read32(r + REG_IVPOSITION);
	kprintf("regs dev=%d ivposition=%u\n", idx, pos);
	if (pos_param) {
		u64 want;
		if (!parse_u64(pos_param, &want))
			fail("bad number in pos=");
		ok &= check("ivposition", pos, want);
	}
	mmio_write32(r + REG_IVPOSITION, pos ^ 0x5a5a);
	ok &= check("ivposition_read_only", mmio_read32(r + REG_IVPOSITION), pos);

	/* A doorbell in plain mode has no peers to ring: nothing may change. */
	mmio_write32(r + REG_INTRMASK, 0x0f0f0f0f);
	mmio_write32(r + REG_DOORBELL, (0u << 16) | 0);
	mmio_write32(r + REG_DOORBELL, (1u << 16) | 1);
	ok &= check("doorbell_plain_intrmask", mmio_read32(r + REG_INTRMASK), 0x0f0f0f0f);
	ok &= check("doorbell_plain_intrstatus", mmio_read32(r + REG_INTRSTATUS), 0);
	ok &= check("doorbell_plain_ivposition", mmio_read32(r + REG_IVPOSITION), pos);
	ok &= check("doorbell_read", mmio_read32(r + REG_DOORBELL), 0);

	/*
	 * Narrow accesses (narrow=ignore, the default, or narrow=widen).
	 * ivvmm: only aligned 4-byte accesses reach a register; 1- and 2-byte
	 * accesses read 0 and are ignored, so reserved bytes stay reserved.
	 * QEMU widens smaller accesses instead: a 1- or 2-byte read at offset o
	 * is a 4-byte register read at o truncated (so only offsets 0, 4, 8
	 * return data and a narrow read of INTRSTATUS clears it), and a narrow
	 * write of v at o writes the zero-extended v to the register at o & ~3.
	 */
	bool widen = param_is("narrow", "widen");
	kprintf("regs dev=%d narrow=%s\n", idx, widen ? "widen" : "ignore");
	mmio_write32(r + REG_INTRMASK, 0x44332211);
	ok &= check("read8_intrmask_off0", mmio_read8(r + 0), widen ? 0x11 : 0);
	ok &= check("read8_intrmask_off1", mmio_read8(r + 1), 0);
	ok &= check("read8_intrmask_off3", mmio_read8(r + 3), 0);
	ok &= check("read16_intrmask_off0", mmio_read16(r + 0), widen ? 0x2211 : 0);
	ok &= check("read16_intrmask_off2", mmio_read16(r + 2), 0);
	ok &= check("read8_ivposition_off8", mmio_read8(r + 8), widen ? (pos & 0xff) : 0);
	mmio_write32(r + REG_INTRSTATUS, 0xa5a5a5a5);
	ok &= check("read8_intrstatus_off4", mmio_read8(r + 4), widen ? 0xa5 : 0);
	ok &= check("read8_intrstatus_cleared", mmio_read32(r + REG_INTRSTATUS),
		    widen ? 0 : 0xa5a5a5a5);
	mmio_write8(r + 0, 0xab);
	ok &= check("write8_intrmask_off0", mmio_read32(r + REG_INTRMASK), widen ? 0xab : 0x44332211);
	mmio_write8(r + 1, 0xcd);
	ok &= check("write8_intrmask_off1", mmio_read32(r + REG_INTRMASK), widen ? 0xcd : 0x44332211);
	mmio_write16(r + 2, 0xbeef);
	ok &= check("write16_intrmask_off2", mmio_read32(r + REG_INTRMASK),
		    widen ? 0xbeef : 0x44332211);
	mmio_write8(r + 9, 0x77);
	ok &= check("write8_ivposition_off9", mmio_read32(r + REG_IVPOSITION), pos);

	/* Unused offsets read 0 and swallow writes. */
	mmio_write32(r + REG_INTRMASK, 0x600d600d);
	static const u8 unused[] = { 0x10, 0x14, 0x40, 0x80, 0xfc };
	for (u32 i = 0; i < ARRAY_SIZE(unused); i++) {
		char name[24] = "unused_0x";
		name[9] = "0123456789abcdef"[unused[i] >> 4];
		name[10] = "0123456789abcdef"[unused[i] & 15];
		name[11] = 0;
		mmio_write32(r + unused[i], 0xffffffff);
		ok &= check(name, mmio_read32(r + unused[i]), 0);
	}
	ok &= check("unused_writes_ignored", mmio_read32(r + REG_INTRMASK), 0x600d600d);
	mmio_write32(r + REG_INTRMASK, 0);
	return ok;
}

void test_ivshmem_regs(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	int n = ivshmem_find(devs, IVSHMEM_MAX, true);
	const char *pos = param("pos");
	int bad = 0;
	for (int i = 0; i < n; i++)
		bad += !regs_one(&devs[i], i, pos);
	if (bad)
		fail("%d of %d devices have bad registers", bad, n);
}
