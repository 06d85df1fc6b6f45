// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// presence: the ivvmm peer-presence extension (docs/ivshmem-presence.md),
// as a driver would use it: find the vendor capability, walk the peers
// with the generation check, and follow changes (polled every 5 ms, or
// through the notification vector with notify=1).
#include "apic.h"
#include "cpu.h"
#include "msix.h"
#include "pci.h"
#include "tests.h"
#include "user.h"

#define CAP_VENDOR	0x09
#define PR_MAGIC	0x80
#define PR_VERSION	0x84
#define PR_GENERATION	0x88
#define PR_LINK		0x8c
#define PR_OWN_ID	0x90
#define PR_PEER_COUNT	0x94
#define PR_PEER_SELECT	0x98
#define PR_PEER_NEXT	0x9c
#define PR_PEER_VECTORS	0xa0
#define PR_NOTIFY	0xa4
#define PR_REJOINS	0xa8
#define NOTIFY_ENABLE	0x80000000u
#define NO_PEER		0xffffffffu

/* The IVPR vendor capability's offset, or 0 (QEMU: no extension). */
static u8 find_presence_cap(struct pci_fn f)
{
	if (!(pci_read16(f, 0x06) & 0x10))
		return 0;
	u8 cap = pci_read8(f, 0x34) & ~3;
	for (int guard = 0; cap && guard < 48; guard++) {
		if (pci_read8(f, cap) == CAP_VENDOR && pci_read32(f, cap + 4) == MAGIC('I', 'V', 'P', 'R'))
			return cap;
		cap = pci_read8(f, cap + 1) & ~3;
	}
	return 0;
}

static u32 rd(u64 base, u32 off) { return mmio_read32(base + off); }

/* The link state and peer count of the last line print_state printed. */
static u32 printed_link, printed_count;

/* One consistent line: generation read before and after the peer walk. */
static u32 print_state(const struct ivshmem_dev *d, u64 base)
{
	static u32 ids[64], vecs[64];
	for (int tries = 0;; tries++) {
		u32 gen = rd(base, PR_GENERATION);
		u32 n = 0, next = 0;
		while (n < 64) {
			mmio_write32(base + PR_PEER_SELECT, next);
			u32 id = rd(base, PR_PEER_NEXT);
			if (id == NO_PEER)
				break;
			mmio_write32(base + PR_PEER_SELECT, id);
			ids[n] = id;
			vecs[n] = rd(base, PR_PEER_VECTORS);
			n++;
			next = id + 1;
		}
		if (rd(base, PR_GENERATION) != gen && tries < 8)
			continue;
		printed_link = rd(base, PR_LINK);
		printed_count = rd(base, PR_PEER_COUNT);
		kprintf("presence gen=%u link=%u own=%u ivposition=%u count=%u rejoins=%u peers=", gen,
			printed_link, rd(base, PR_OWN_ID), ivshmem_id(d), printed_count,
			rd(base, PR_REJOINS));
		for (u32 i = 0; i < n; i++)
			kprintf("%s%u:%u", i ? "," : "", ids[i], vecs[i]);
		kprintf("%s\n", n ? "" : "none");
		return gen;
	}
}

/* Whether the last line printed shows link state `link` (0: no condition)
 * with at least `peers` peers. */
static bool until_met(u64 link, u64 peers)
{
	return link && printed_link == link && printed_count >= peers;
}

/* Sleeps about ms with hlt (the LAPIC timer, or an MSI-X vector, wakes us). */
static void sleep_ms(u32 ms)
{
	u32 t = irq_count[VEC_TIMER];
	lapic_timer_oneshot_ms(ms);
	cli();
	while (irq_count[VEC_TIMER] == t) {
		sti_hlt();
		cli();
	}
	sti();
}

// presence [notify=0|1] [vector=0] [changes=N] [until_link=L [until_peers=N]] [timeout_ms=20000]
void test_presence(void)
{
	bool notify = param_u64("notify", 0) != 0;
	u32 v = (u32)param_u64("vector", 0);
	u64 changes = param_u64("changes", 0);
	u64 until_link = param_u64("until_link", 0);
	u64 until_peers = param_u64("until_peers", 0);
	u64 timeout_ms = param_u64("timeout_ms", 20000);

	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	static struct msix m;
	/* ivshmem-plain has neither MSI-X nor the extension. */
	if (d->msix_cap)
		msix_setup(&m, d, 0, false, false);
	u8 cap = find_presence_cap(d->f);
	if (!cap) {
		/* What a driver sees on QEMU: no extension; BAR0 above 16 reads 0. */
		kprintf("presence absent reg=0x%x\n", rd(d->bar[0].addr, PR_MAGIC));
		return;
	}
	u64 base = d->bar[0].addr;
	kprintf("presence cap=0x%x version=%u bar=%u magic_ok=%u\n", cap, pci_read8(d->f, cap + 3),
		pci_read8(d->f, cap + 8), rd(base, PR_MAGIC) == MAGIC('I', 'V', 'P', 'R'));
	if (rd(base, PR_MAGIC) != MAGIC('I', 'V', 'P', 'R') || rd(base, PR_VERSION) != 1)
		fail("capability found but the registers do not answer");
	if (notify) {
		if (v >= m.nvec || v >= VEC_MSIX_COUNT)
			fail("vector=%u but the device has %u vectors", v, m.nvec);
		mmio_write32(base + PR_NOTIFY, NOTIFY_ENABLE | v);
	}
	tsc_per_us();
	u32 gen = print_state(d, base);
	kprintf("presence ready id=%u\n", ivshmem_id(d));
	u64 seen = 0, waited = 0;
	/*
	 * until_link (and until_peers) met, judged on the line printed last:
	 * that state is the one the host reads, and a peer that met its own
	 * condition may leave before we look again.
	 */
	bool reached = until_met(until_link, until_peers);
	while (!reached && (changes == 0 || seen < changes) && waited < timeout_ms) {
		sleep_ms(5);
		waited += 5;
		u32 now = rd(base, PR_GENERATION);
		if (now == gen)
			continue;
		if ((int)(now - gen) < 0)
			fail("generation went backwards: %u after %u", now, gen);
		gen = print_state(d, base);
		seen++;
		reached = until_met(until_link, until_peers);
	}
	kprintf("presence done changes=%lu notify_irqs=%u\n", seen, notify ? MSIX_COUNT(v) : 0);
	if (changes && seen < changes)
		fail("saw %lu of %lu changes within %lu ms", seen, changes, timeout_ms);
	if (until_link && !reached)
		fail("link %u with %u peers, not %lu with %lu, after %lu ms", rd(base, PR_LINK),
		     rd(base, PR_PEER_COUNT), until_link, until_peers, timeout_ms);
}

/* ---- rejoin-pingpong: round trips that carry on across a server restart ---- */

#define RJ_SEQ	0x200	/* u64: ping's round number */
#define RJ_ECHO	0x240	/* u64: pong's echo of it */
#define RJ_DONE	0x280	/* u32 "RJDN": ping finished */

struct rj {
	struct ivshmem_dev *d;
	u64 base;	/* presence registers */
	u32 gen, peer, vector;
};

/* The one other peer (these runs have two), re-read when the generation moved. */
static u32 rj_peer(struct rj *r)
{
	u32 gen = rd(r->base, PR_GENERATION);
	if (gen != r->gen) {
		mmio_write32(r->base + PR_PEER_SELECT, 0);
		r->peer = rd(r->base, PR_PEER_NEXT);
		r->gen = gen;
	}
	return r->peer;
}

/* hlt until vector `v` counts an interrupt or about `ms` pass. */
static void wait_event(u32 v, u32 ms)
{
	u32 c = MSIX_COUNT(v), t = irq_count[VEC_TIMER];
	lapic_timer_oneshot_ms(ms);
	cli();
	while (MSIX_COUNT(v) == c && irq_count[VEC_TIMER] == t) {
		sti_hlt();
		cli();
	}
	sti();
	lapic_timer_stop();
}

// rejoin-pingpong role=ping|pong [rounds=1000] [gap_ms=2] [vector=0] [timeout_ms=60000]
void test_rejoin_pingpong(void)
{
	const char *role = param("role");
	if (!role || !(str_eq_n(role, "ping", 4) || str_eq_n(role, "pong", 4)))
		fail("role=ping|pong is required");
	bool ping = role[1] == 'i';
	u64 rounds = param_u64("rounds", 1000), gap = param_u64("gap_ms", 2);
	u64 timeout_ms = param_u64("timeout_ms", 60000);
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	static struct rj r;
	r.d = &devs[0];
	r.vector = (u32)param_u64("vector", 0);
	static struct msix m;
	msix_setup(&m, r.d, 0, false, false);
	if (!find_presence_cap(r.d->f))
		fail("no presence extension: this case needs ivvmm's");
	r.base = r.d->bar[0].addr;
	r.gen = 0;
	lapic_enable();
	tsc_per_us();
	sti();
	volatile u64 *seq = (volatile u64 *)(r.d->bar[2].addr + RJ_SEQ);
	volatile u64 *echo = (volatile u64 *)(r.d->bar[2].addr + RJ_ECHO);
	volatile u32 *done = (volatile u32 *)(r.d->bar[2].addr + RJ_DONE);
	u64 waited = 0;

	if (!ping) {
		*seq = 0;
		*echo = 0;
		*done = 0;
		kprintf("rejoin-pingpong role=pong id=%u ready\n", ivshmem_id(r.d));
		u64 last = 0, echoed = 0;
		while (*done != MAGIC('R', 'J', 'D', 'N') && waited < timeout_ms) {
			wait_event(r.vector, 5);
			u64 s = *seq;
			if (s == last) {
				waited += 5;
				continue;
			}
			waited = 0;
			*echo = s;
			last = s;
			echoed++;
			u32 peer = rj_peer(&r);
			if (peer != NO_PEER)
				ring(r.d, peer, r.vector);
		}
		kprintf("rejoin-pingpong role=pong echoed=%lu rejoins=%u id=%u\n", echoed,
			rd(r.base, PR_REJOINS), ivshmem_id(r.d));
		if (*done != MAGIC('R', 'J', 'D', 'N'))
			fail("no DONE from ping within %lu ms of silence", timeout_ms);
		return;
	}

	while (rj_peer(&r) == NO_PEER) {
		if (waited >= timeout_ms)
			fail("no pong within %lu ms", timeout_ms);
		wait_event(r.vector, 5);
		waited += 5;
		r.gen = 0;
	}
	kprintf("rejoin-pingpong role=ping id=%u peer=%u rounds=%lu\n", ivshmem_id(r.d), r.peer,
		rounds);
	u64 retries = 0, slowest = 0;
	for (u64 i = 1; i <= rounds; i++) {
		*seq = i;
		ring(r.d, rj_peer(&r), r.vector);
		u64 t0 = rdtsc(), tries = 0;
		while (*echo != i) {
			wait_event(r.vector, 20);
			if (*echo == i)
				break;
			/* Lost (the server restarted, ids changed): ask again. */
			if (++tries * 20 > timeout_ms)
				fail("round %lu unanswered for %lu ms", i, timeout_ms);
			retries++;
			u32 peer = rj_peer(&r);
			if (peer != NO_PEER)
				ring(r.d, peer, r.vector);
		}
		u64 us = (rdtsc() - t0) / tsc_per_us();
		if (us > slowest)
			slowest = us;
		if (gap)
			sleep_ms((u32)gap);
	}
	*done = MAGIC('R', 'J', 'D', 'N');
	kprintf("rejoin-pingpong rounds=%lu retries=%lu slowest_us=%lu rejoins=%u id=%u peer=%u\n",
		rounds, retries, slowest, rd(r.base, PR_REJOINS), ivshmem_id(r.d), r.peer);
}

/* ---- presence-mirror: how soon a change shows (tests/presence.rs times it) ---- */

#define MIRROR_OFF 0x300	/* u32: the last PR_GENERATION the guest saw */

struct mirror {
	u64 base, tsc_per_us, reads;
	volatile u32 *out;
	u32 changes;
};

/* CPL3: read PR_GENERATION without pause and publish every new value. */
static u64 user_mirror(u64 arg)
{
	struct mirror *m = (struct mirror *)arg;
	u32 last = *m->out, seen = 0;
	while (seen < m->changes && irq_count[VEC_TIMER] == 0) {
		/* About 20 us between reads: each read is served by the VMM with
		 * the device held, and a guest reading back to back would keep
		 * the event loop (which updates the registers) out. */
		u64 t = rdtsc() + 20 * m->tsc_per_us;
		while (rdtsc() < t)
			pause();
		u32 g = mmio_read32(m->base + PR_GENERATION);
		m->reads++;
		if (g != last) {
			*m->out = g;
			last = g;
			seen++;
		}
	}
	return seen;
}

// presence-mirror [changes=2] [timeout_ms=30000]: publishes PR_GENERATION
// at BAR2+0x300 the moment it changes, so the host can time a join/leave.
void test_presence_mirror(void)
{
	u64 timeout_ms = param_u64("timeout_ms", 30000);
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	if (!find_presence_cap(d->f))
		fail("no presence extension");
	static struct mirror m;
	m.base = d->bar[0].addr;
	m.out = (volatile u32 *)(d->bar[2].addr + MIRROR_OFF);
	m.changes = (u32)param_u64("changes", 2);
	m.tsc_per_us = tsc_per_us();
	*m.out = rd(m.base, PR_GENERATION);
	lapic_enable();
	lapic_timer_oneshot_ms(timeout_ms > 500000 ? 500000 : (u32)timeout_ms);
	sti();
	kprintf("presence-mirror gen=%u ready\n", *m.out);
	u64 t0 = rdtsc();
	u64 seen = user_call(user_mirror, (u64)&m, true);
	u64 us = (rdtsc() - t0) / m.tsc_per_us;
	kprintf("presence-mirror changes=%lu gen=%u reads=%lu us_per_read=%lu\n", seen, *m.out,
		m.reads, m.reads ? us / m.reads : 0);
	if (seen < m.changes)
		fail("saw %lu of %u changes", seen, m.changes);
}
