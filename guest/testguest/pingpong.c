// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// pingpong: round-trip latency between two VMs through ivshmem doorbells
// (MSI-X interrupts, waiting with hlt or a user-mode spin) or through
// sequence numbers in shared memory (mode=poll, no interrupts).
//
// Functions marked CPL3 run in user mode through user_call(): they touch
// only memory (BAR0 and BAR2 are mapped user-accessible).
#include "apic.h"
#include "cpu.h"
#include "msix.h"
#include "tests.h"
#include "user.h"

#define SORT_BUFFER 0x1000000ull	/* RAM scratch for sorting samples */

struct pp {
	u64 shm, doorbell;
	u32 me, peer, vector, rounds;
	bool ping, spin, poll;
	u64 timeout_ms;
};

static volatile u32 *shm32(const struct pp *p, u64 off) { return (volatile u32 *)(p->shm + off); }
static volatile u64 *shm64(const struct pp *p, u64 off) { return (volatile u64 *)(p->shm + off); }
static bool timed_out(void) { return irq_count[VEC_TIMER] != 0; }

/* ---- rendezvous (CPL3) ---- */

/*
 * Pong publishes {PONG, id, nonce}; ping answers {PING, id, echo of that
 * nonce, its own fresh nonce}; pong then copies ping's nonce into "ready".
 * Both nonces are fresh rdtsc values, so leftovers of an earlier run (a
 * crashed peer) can never pair this ping with a stale pong or vice versa.
 */
static u64 pong_rendezvous(u64 arg)
{
	struct pp *p = (struct pp *)arg;
	u64 nonce = *shm64(p, SHM_PONG + 8);
	for (;;) {
		if (timed_out())
			return 0;
		if (*shm32(p, SHM_PING) == MAGIC('P', 'I', 'N', 'G') &&
		    *shm64(p, SHM_PING + 8) == nonce) {
			p->peer = *shm32(p, SHM_PING + 4);
			*shm64(p, SHM_PONG + 16) = *shm64(p, SHM_PING + 16);
			return 1;
		}
		pause();
	}
}

static u64 ping_rendezvous(u64 arg)
{
	struct pp *p = (struct pp *)arg;
	u64 echoed = 0, mine = rdtsc() | 1;
	for (;;) {
		if (timed_out())
			return 0;
		if (*shm32(p, SHM_PONG) == MAGIC('P', 'O', 'N', 'G')) {
			u64 nonce = *shm64(p, SHM_PONG + 8);
			if (nonce != echoed) {
				/* A (new) pong: answer its nonce. */
				*shm32(p, SHM_PING) = 0;
				*shm32(p, SHM_PING + 4) = p->me;
				*shm64(p, SHM_PING + 8) = nonce;
				*shm64(p, SHM_PING + 16) = mine;
				*shm32(p, SHM_PING) = MAGIC('P', 'I', 'N', 'G');
				echoed = nonce;
			} else if (*shm64(p, SHM_PONG + 16) == mine) {
				p->peer = *shm32(p, SHM_PONG + 4);
				return 1;
			}
		}
		pause();
	}
}

static u64 wait_done(u64 arg)
{
	struct pp *p = (struct pp *)arg;
	while (*shm32(p, SHM_DONE) != MAGIC('D', 'O', 'N', 'E') && !timed_out())
		pause();
	return !timed_out();
}

/* ---- rounds ---- */

/*
 * Kernel mode, wait=hlt: ring, sti;hlt until the handler has counted. Every
 * instruction here is emulated on PVM (about 1 us per memory access), so
 * the loop is written out to match the bare-KVM floor program's round
 * instruction for instruction (examples/doorbell_floor): everything lives in
 * registers, and after a wakeup the counter is checked first, so the
 * timeout flag is read only when something else (the LAPIC timer) woke us.
 */
static u32 rounds_hlt(struct pp *p)
{
	volatile u32 *count = &MSIX_COUNT(p->vector);
	volatile u32 *timer = &irq_count[VEC_TIMER];
	u32 *samples = (u32 *)shm32(p, SHM_SAMPLES);
	u32 *doorbell = (u32 *)p->doorbell;
	u32 val = (p->peer << 16) | p->vector;
	u64 i = 0;

	if (p->ping) {
		__asm__ volatile(
			"1:	leal	1(%k[i]), %%ecx\n"
			"	rdtsc\n"
			"	shlq	$32, %%rdx\n"
			"	movl	%%eax, %%eax\n"
			"	orq	%%rax, %%rdx\n"
			"	movq	%%rdx, %%r8\n"
			"	movl	%[val], (%[db])\n"		/* ring pong */
			"	cli\n"
			"2:	cmpl	%%ecx, (%[count])\n"
			"	jae	3f\n"
			"	sti\n"
			"	hlt\n"
			"	cli\n"
			"	cmpl	%%ecx, (%[count])\n"	/* woken by our interrupt? */
			"	jae	3f\n"
			"	cmpl	$0, (%[timer])\n"	/* else: the timeout? */
			"	je	2b\n"
			"	jmp	4f\n"
			"3:	rdtsc\n"
			"	subl	%%r8d, %%eax\n"
			"	movl	%%eax, (%[samples],%[i],4)\n"
			"	movl	%%ecx, %k[i]\n"
			"	cmpl	%[rounds], %k[i]\n"
			"	jb	1b\n"
			"4:	sti\n"
			: [i] "+r"(i)
			: [val] "r"(val), [db] "r"(doorbell), [count] "r"(count), [timer] "r"(timer),
			  [samples] "r"(samples), [rounds] "r"(p->rounds)
			: "rax", "rcx", "rdx", "r8", "cc", "memory");
	} else {
		__asm__ volatile(
			"1:	leal	1(%k[i]), %%ecx\n"
			"	cli\n"
			"2:	cmpl	%%ecx, (%[count])\n"
			"	jae	3f\n"
			"	sti\n"
			"	hlt\n"
			"	cli\n"
			"	cmpl	%%ecx, (%[count])\n"	/* woken by our interrupt? */
			"	jae	3f\n"
			"	cmpl	$0, (%[timer])\n"	/* else: the timeout? */
			"	je	2b\n"
			"	jmp	4f\n"
			"3:	movl	%[val], (%[db])\n"		/* ring ping back */
			"	movl	%%ecx, %k[i]\n"
			"	cmpl	%[rounds], %k[i]\n"
			"	jb	1b\n"
			"4:	sti\n"
			: [i] "+r"(i)
			: [val] "r"(val), [db] "r"(doorbell), [count] "r"(count), [timer] "r"(timer),
			  [rounds] "r"(p->rounds)
			: "rax", "rcx", "rdx", "cc", "memory");
	}
	return (u32)i;
}

/* CPL3 with interrupts on, wait=spin: the handler bumps the counter. */
static u64 rounds_spin(u64 arg)
{
	struct pp *p = (struct pp *)arg;
	volatile u32 *count = &MSIX_COUNT(p->vector);
	volatile u32 *samples = shm32(p, SHM_SAMPLES);
	volatile u32 *doorbell = (volatile u32 *)p->doorbell;
	u32 val = (p->peer << 16) | p->vector;
	u32 i;
	for (i = 0; i < p->rounds && !timed_out(); i++) {
		u32 want = i + 1;
		if (p->ping) {
			u64 t0 = rdtsc();
			*doorbell = val;
			while (*count < want && !timed_out())
				pause();
			samples[i] = (u32)(rdtsc() - t0);
		} else {
			while (*count < want && !timed_out())
				pause();
			*doorbell = val;
		}
	}
	return i;
}

/* CPL3, mode=poll: sequence numbers in shared memory, no interrupts. */
static u64 rounds_poll(u64 arg)
{
	struct pp *p = (struct pp *)arg;
	volatile u64 *ping_seq = shm64(p, SHM_PING_SEQ), *pong_seq = shm64(p, SHM_PONG_SEQ);
	volatile u32 *samples = shm32(p, SHM_SAMPLES);
	u32 i;
	for (i = 0; i < p->rounds && !timed_out(); i++) {
		u64 s = i + 1;
		if (p->ping) {
			u64 t0 = rdtsc();
			*ping_seq = s;
			while (*pong_seq != s && !timed_out())
				pause();
			samples[i] = (u32)(rdtsc() - t0);
		} else {
			while (*ping_seq != s && !timed_out())
				pause();
			*pong_seq = s;
		}
	}
	return i;
}

static void report(struct pp *p)
{
	u64 n = p->rounds;
	if (!e820_is_ram(SORT_BUFFER, 4 * n))
		fail("no RAM at 0x%llx for sorting %lu samples", SORT_BUFFER, n);
	memcpy((void *)SORT_BUFFER, (const void *)shm32(p, SHM_SAMPLES), 4 * n);
	static struct sort_job job;
	job = (struct sort_job){ (u32 *)SORT_BUFFER, n };
	user_call(user_sort_u32, (u64)&job, false);
	const u32 *v = (const u32 *)SORT_BUFFER;
	/* Calibrated after the rounds, so it costs them nothing. */
	u64 tsc = tsc_per_us();
	kprintf("pingpong rounds=%lu p50=%u p90=%u p99=%u max=%u unit=cycles tsc_per_us=%lu\n", n,
		v[n * 50 / 100], v[n * 90 / 100], v[n * 99 / 100], v[n - 1], tsc);
}

void test_pingpong(void)
{
	static struct pp p;
	const char *role = param("role"), *wait = param("wait"), *mode = param("mode");
	if (!role || !(str_eq_n(role, "ping", 4) || str_eq_n(role, "pong", 4)) ||
	    (role[4] && role[4] != ' '))
		fail("role=ping|pong is required");
	p.ping = role[1] == 'i';
	p.spin = wait && str_eq_n(wait, "spin", 4);
	if (wait && !p.spin && !str_eq_n(wait, "hlt", 3))
		fail("wait= must be hlt or spin");
	p.poll = mode && str_eq_n(mode, "poll", 4);
	if (mode && !p.poll && !str_eq_n(mode, "irq", 3))
		fail("mode= must be irq or poll");
	u64 rounds = param_u64("rounds", 1000);
	p.vector = (u32)param_u64("vector", 0);
	p.timeout_ms = param_u64("timeout_ms", 120000);
	if (!rounds || rounds > (0x1000000 - SHM_SAMPLES) / 4)
		fail("rounds=%lu out of range", rounds);
	p.rounds = (u32)rounds;

	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	if (d->bar[2].size < SHM_SAMPLES + 4 * rounds)
		fail("BAR2 (0x%lx) too small for %lu samples", d->bar[2].size, rounds);
	p.shm = d->bar[2].addr;
	p.doorbell = d->bar[0].addr + REG_DOORBELL;
	p.me = ivshmem_id(d);
	if (!p.poll) {
		static struct msix m;
		msix_setup(&m, d, 0, false, false);
		if (p.vector >= m.nvec || p.vector >= VEC_MSIX_COUNT)
			fail("vector=%u but the device has %u vectors", p.vector, m.nvec);
	}
	lapic_enable();
	if (p.timeout_ms)
		lapic_timer_oneshot_ms(p.timeout_ms > 500000 ? 500000 : (u32)p.timeout_ms);
	sti();

	if (!p.ping) {
		*shm32(&p, SHM_PONG) = 0;
		*shm32(&p, SHM_DONE) = 0;
		*shm64(&p, SHM_PING_SEQ) = 0;
		*shm64(&p, SHM_PONG_SEQ) = 0;
		*shm32(&p, SHM_PONG + 4) = p.me;
		*shm64(&p, SHM_PONG + 8) = rdtsc() | 1;
		*shm64(&p, SHM_PONG + 16) = 0;
		*shm32(&p, SHM_PONG) = MAGIC('P', 'O', 'N', 'G');
		kprintf("pingpong role=pong id=%u ready\n", p.me);
		if (!user_call(pong_rendezvous, (u64)&p, true))
			fail("timeout: no ping within %lu ms", p.timeout_ms);
	} else {
		*shm32(&p, SHM_PING) = 0;
		if (!user_call(ping_rendezvous, (u64)&p, true))
			fail("timeout: no pong within %lu ms", p.timeout_ms);
	}
	kprintf("pingpong role=%s id=%u peer=%u vector=%u rounds=%u wait=%s mode=%s\n",
		p.ping ? "ping" : "pong", p.me, p.peer, p.vector, p.rounds,
		p.poll ? "none" : p.spin ? "spin" : "hlt",
		p.poll ? "poll" : "irq");

	u32 done;
	if (p.poll)
		done = (u32)user_call(rounds_poll, (u64)&p, true);
	else if (p.spin)
		done = (u32)user_call(rounds_spin, (u64)&p, true);
	else
		done = rounds_hlt(&p);
	if (done != p.rounds)
		fail("timeout after %u of %u rounds (irqs=%u)", done, p.rounds,
		     MSIX_COUNT(p.vector));

	if (p.ping) {
		*shm32(&p, SHM_DONE) = MAGIC('D', 'O', 'N', 'E');
		*shm32(&p, SHM_PING) = 0;
		lapic_timer_stop();
		report(&p);
	} else {
		if (!user_call(wait_done, (u64)&p, true))
			fail("timeout waiting for DONE from ping");
		*shm32(&p, SHM_PONG) = 0;
		lapic_timer_stop();
		kprintf("pingpong role=pong rounds=%u irqs=%u\n", p.rounds,
			p.poll ? 0 : MSIX_COUNT(p.vector));
	}
}
