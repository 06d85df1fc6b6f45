// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Doorbell-mode edge cases: msix-mask (pending bit while masked, exactly one
// interrupt on unmask) and doorbell-bad (doorbells that must go nowhere).
#include "apic.h"
#include "cpu.h"
#include "msix.h"
#include "tests.h"

static u32 msix_total(void)
{
	u32 n = 0;
	for (u32 v = 0; v < VEC_MSIX_COUNT; v++)
		n += MSIX_COUNT(v);
	return n;
}

/* Waits with interrupts on; returns once MSIX_COUNT(v) >= want or after ms. */
static void wait_irq(u32 v, u32 want, u64 ms)
{
	u64 end = rdtsc() + ms * 1000 * tsc_per_us();
	sti();
	while (MSIX_COUNT(v) < want && rdtsc() < end)
		pause();
}

void test_msix_mask(void)
{
	const char *how = param("mask");
	u32 v = (u32)param_u64("vector", 0);
	u64 timeout_ms = param_u64("timeout_ms", 30000);
	int mode;
	if (how && str_eq_n(how, "entry", 5))
		mode = 0;
	else if (how && str_eq_n(how, "function", 8))
		mode = 1;
	else if (how && str_eq_n(how, "disabled", 8))
		mode = 2;
	else
		fail("mask=entry|function|disabled is required");
	static const char *const names[] = { "entry", "function", "disabled" };

	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	static struct msix m;
	msix_setup(&m, d, mode == 0 ? 1u << v : 0, mode == 1, mode == 2);
	if (v >= m.nvec || v >= VEC_MSIX_COUNT)
		fail("vector=%u but the device has %u vectors", v, m.nvec);
	u32 id = ivshmem_id(d);
	tsc_per_us();
	sti();

	volatile u32 *slot = (volatile u32 *)(d->bar[2].addr + SHM_MASK);
	slot[0] = 0;
	slot[2] = 0;	/* a RUNG mark left over from an earlier run */
	slot[1] = id;
	slot[0] = MAGIC('M', 'A', 'S', 'K');
	kprintf("msix-mask mask=%s vector=%u id=%u ready\n", names[mode], v, id);

	/*
	 * Wait for the host's ring to show as the pending bit. With MSI-X
	 * disabled QEMU leaves the event in the eventfd and sets no PBA bit,
	 * so there a host "RUNG" mark for our id (u32 "RUNG" at SHM_MASK + 8,
	 * u32 id at SHM_MASK + 12) or the timeout ends the wait; enabling must
	 * then deliver the held event once.
	 */
	u64 end = rdtsc() + timeout_ms * 1000 * tsc_per_us();
	bool pending = false, rung = false;
	while (rdtsc() < end) {
		pending = msix_pending(&m, v);
		rung = slot[2] == MAGIC('R', 'U', 'N', 'G') && slot[3] == id;
		if (pending || (mode == 2 && rung))
			break;
		udelay(1000);
	}
	slot[0] = 0;
	slot[2] = 0;
	kprintf("msix-mask step=masked pending=%u rung=%u irqs=%u\n", pending, rung, MSIX_COUNT(v));
	if (!pending && mode != 2)
		fail("PBA bit %u never set within %lu ms while masked", v, timeout_ms);
	udelay(20000);	/* room for a wrongly delivered interrupt to show */
	if (MSIX_COUNT(v))
		fail("%u interrupt(s) delivered while masked", MSIX_COUNT(v));

	if (mode == 0)
		msix_mask_entry(&m, v, false);
	else if (mode == 1)
		msix_set_ctrl(&m, 0, MSIX_CTRL_FMASK);
	else
		msix_set_ctrl(&m, MSIX_CTRL_ENABLE, 0);
	wait_irq(v, 1, 1000);
	udelay(20000);	/* a second (wrong) interrupt would show by now */
	bool still = msix_pending(&m, v);
	kprintf("msix-mask step=unmasked irqs=%u pending=%u\n", MSIX_COUNT(v), still);
	if (MSIX_COUNT(v) != 1)
		fail("%u interrupts after unmasking, want exactly 1", MSIX_COUNT(v));
	if (still)
		fail("PBA bit %u still set after delivery", v);
}

/*
 * Rings (peer << 16) | vector and counts the interrupts that follow within
 * 50 ms; want_vec is the MSI-X entry that must fire once, or -1 for none.
 */
static bool ring_expect(struct ivshmem_dev *d, const char *what, u32 peer, u32 vector, int want_vec)
{
	u32 before = msix_total(), before_v = want_vec >= 0 ? MSIX_COUNT(want_vec) : 0;
	ring(d, peer, vector);
	if (want_vec >= 0)
		wait_irq(want_vec, before_v + 1, 1000);
	udelay(50000);
	u32 got = msix_total() - before;
	bool ok = want_vec < 0 ? got == 0 : (got == 1 && MSIX_COUNT(want_vec) == before_v + 1);
	kprintf("doorbell-bad ring=%s value=0x%x irqs=%u want=%u %s\n", what, (peer << 16) | vector,
		got, want_vec >= 0, ok ? "ok" : "bad");
	return ok;
}

void test_doorbell_bad(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	static struct msix m;
	msix_setup(&m, d, 0, false, false);
	u32 id = ivshmem_id(d);
	/*
	 * vector_mask: the bits of the vector field the device looks at.
	 * 0xffff (default): any vector >= our count goes nowhere. QEMU 7.2
	 * uses only the low 8 bits (vector_mask=0xff): 0x100 rings vector 0.
	 */
	u32 vmask = (u32)param_u64("vector_mask", 0xffff);
	tsc_per_us();
	sti();
	kprintf("doorbell-bad id=%u vectors=%u vector_mask=0x%x\n", id, m.nvec, vmask);

	static const u32 bad_vectors[] = { 0xff, 0x100, 0xffff };
	bool ok = ring_expect(d, "unknown_peer", 0xffff, 0, -1);
	for (u32 i = 0; i < ARRAY_SIZE(bad_vectors); i++) {
		u32 bv = bad_vectors[i], eff = bv & vmask;
		char name[24] = "self_vector_0x";
		u32 n = 14;
		for (int sh = 12; sh >= 0; sh -= 4)
			if ((bv >> sh) || !sh)
				name[n++] = "0123456789abcdef"[(bv >> sh) & 15];
		name[n] = 0;
		ok &= ring_expect(d, name, id, bv, eff < m.nvec && eff < VEC_MSIX_COUNT ? (int)eff : -1);
	}
	if (m.nvec < 0xff)
		ok &= ring_expect(d, "self_vector_count", id, m.nvec, -1);
	ok &= ring_expect(d, "self_vector_0", id, 0, 0);

	/*
	 * BAR0 moves (decode off, new address, decode on): the doorbells must
	 * follow it, and its old address must be dead.
	 */
	u64 old0 = d->bar[0].addr;
	u64 new0 = param_u64("bar0_to", old0 + 0x800);
	pci_bar_set(d->f, 0, false, new0);
	kprintf("doorbell-bad bar0 from=0x%lx to=0x%lx\n", old0, new0);
	d->bar[0].addr = new0;
	ok &= ring_expect(d, "self_vector_0_bar0_moved", id, 0, 0);
	d->bar[0].addr = old0;
	ok &= ring_expect(d, "old_bar0_address", id, 0, -1);
	d->bar[0].addr = new0;
	if (!ok)
		fail("a doorbell went to the wrong place");
}

// bar0-storm [moves=0]: a guest that moves BAR0 back and forth without end
// (moves=0) — each move has the VMM re-register every doorbell. The VMM
// must still stop at once on SIGTERM, and its event loop must not wait
// for the device meanwhile.
void test_bar0_storm(void)
{
	u64 moves = param_u64("moves", 0);
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	static struct msix m;
	msix_setup(&m, d, 0, false, false);
	u64 a = d->bar[0].addr, b = a + 0x800;
	kprintf("bar0-storm id=%u from=0x%lx to=0x%lx ready\n", ivshmem_id(d), a, b);
	for (u64 i = 0; !moves || i < moves; i++)
		pci_bar_set(d->f, 0, false, (i & 1) ? a : b);
	kprintf("bar0-storm moves=%lu\n", moves);
}
