// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ivshmem-bw: rep movsb between a RAM buffer and BAR2, in user mode (native
// on PVM), timed with rdtsc. The host converts cycles with its TSC rate.
#include "cpu.h"
#include "ivshmem.h"
#include "tests.h"
#include "user.h"

#define BW_BUFFER 0x1000000ull	/* 16 MiB: clear of the image and low memory */

void test_ivshmem_bw(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	u64 size = param_u64("size", 1 << 20), iters = param_u64("iters", 16);
	if (!size || size > d->bar[2].size)
		fail("size=0x%lx must be 1..BAR2 size 0x%lx", size, d->bar[2].size);
	if (!iters)
		fail("iters must be at least 1");
	if (!e820_is_ram(BW_BUFFER, size))
		fail("RAM buffer 0x%llx+0x%lx is not e820 RAM (give the VM more memory)", BW_BUFFER,
		     size);

	u64 bar = d->bar[2].addr, last = (size & ~7ull) - 8;
	static struct fill_job fill;
	static struct copy_job job;
	fill = (struct fill_job){ BW_BUFFER, size, 0x0123456700000000ull };
	user_call(user_fill, (u64)&fill, false);
	job = (struct copy_job){ bar, BW_BUFFER, size, iters, 0 };
	user_call(user_copy_timed, (u64)&job, false);
	kprintf("bw dir=to_bar2 bytes=%lu cycles=%lu\n", size * iters, job.cycles);
	if (size >= 16 && (mmio_read64(bar) != fill.seed || mmio_read64(bar + last) != fill.seed + last / 8))
		fail("BAR2 does not hold the copied data");

	fill.dst = bar;
	fill.seed = 0x7654321000000000ull;
	user_call(user_fill, (u64)&fill, false);
	job = (struct copy_job){ BW_BUFFER, bar, size, iters, 0 };
	user_call(user_copy_timed, (u64)&job, false);
	kprintf("bw dir=from_bar2 bytes=%lu cycles=%lu\n", size * iters, job.cycles);
	if (size >= 16 && (mmio_read64(BW_BUFFER) != fill.seed ||
			   mmio_read64(BW_BUFFER + last) != fill.seed + last / 8))
		fail("the RAM buffer does not hold the data copied from BAR2");
	kprintf("bw tsc_per_us=%lu\n", tsc_per_us());
}
