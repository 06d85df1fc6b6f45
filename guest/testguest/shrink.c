// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ivshmem-shrink: the host truncates the shared memory while we use it.
// The VMM must unmap what no longer exists (devices/ivshmem/backing.rs):
// reads there become all-ones, writes are dropped, the VM keeps running.
#include "apic.h"
#include "cpu.h"
#include "ivshmem.h"
#include "tests.h"
#include "user.h"

struct job {
	volatile u32 *low, *high;	/* a word that stays, one that goes */
	u64 reads;
};

static bool timed_out(void) { return irq_count[VEC_TIMER] != 0; }

/* CPL3: read the word past the future end until it reads all-ones. */
static u64 user_wait_gone(u64 arg)
{
	struct job *j = (struct job *)arg;
	while (!timed_out()) {
		j->reads++;
		if (*j->high == 0xffffffffu)
			return 1;
		pause();
	}
	return 0;
}

// ivshmem-shrink [offset=0x10000] [timeout_ms=20000]
void test_ivshmem_shrink(void)
{
	u64 off = param_u64("offset", 0x10000), timeout_ms = param_u64("timeout_ms", 20000);
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	if (off + 4 > d->bar[2].size)
		fail("offset=0x%lx is outside BAR2 (0x%lx)", off, d->bar[2].size);
	static struct job j;
	j.low = (volatile u32 *)d->bar[2].addr;
	j.high = (volatile u32 *)(d->bar[2].addr + off);
	*j.low = MAGIC('L', 'O', 'W', '!');
	*j.high = MAGIC('H', 'I', 'G', 'H');
	if (*j.high != MAGIC('H', 'I', 'G', 'H'))
		fail("BAR2+0x%lx does not hold what we wrote", off);
	lapic_enable();
	tsc_per_us();
	lapic_timer_oneshot_ms(timeout_ms > 500000 ? 500000 : (u32)timeout_ms);
	sti();
	kprintf("ivshmem-shrink ready offset=0x%lx\n", off);
	if (!user_call(user_wait_gone, (u64)&j, true))
		fail("BAR2+0x%lx still reads 0x%x after %lu ms", off, *j.high, timeout_ms);
	*j.high = 0x12345678;
	u32 after = *j.high, low = *j.low;
	kprintf("ivshmem-shrink seen reads=%lu after_write=0x%x low=0x%x\n", j.reads, after, low);
	if (after != 0xffffffffu)
		fail("a write past the end was not dropped: reads 0x%x", after);
	if (low != MAGIC('L', 'O', 'W', '!'))
		fail("the memory that still exists changed: 0x%x", low);
	/* Keep running until the host stops us (or the timer ends the case). */
	cli();
	while (!timed_out()) {
		sti_hlt();
		cli();
	}
	sti();
	kprintf("ivshmem-shrink still running at the timeout\n");
}
