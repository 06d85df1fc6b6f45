// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// CPL3 routines (see user.h).
#include "user.h"

static inline void copy_bytes(u64 dst, u64 src, u64 n)
{
	__asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(n) : : "memory");
}

u64 user_copy_timed(u64 arg)
{
	struct copy_job *j = (struct copy_job *)arg;
	copy_bytes(j->dst, j->src, j->size);
	u64 t0 = rdtsc();
	for (u64 i = 0; i < j->iters; i++)
		copy_bytes(j->dst, j->src, j->size);
	j->cycles = rdtsc() - t0;
	return 0;
}

u64 user_fill(u64 arg)
{
	struct fill_job *j = (struct fill_job *)arg;
	volatile u64 *p = (volatile u64 *)j->dst;
	for (u64 i = 0; i < j->size / 8; i++)
		p[i] = j->seed + i;
	return 0;
}

/* Heap sort: no recursion, no extra memory, O(n log n). */
static void sift(u32 *v, u64 root, u64 n)
{
	for (;;) {
		u64 c = 2 * root + 1;
		if (c >= n)
			return;
		if (c + 1 < n && v[c + 1] > v[c])
			c++;
		if (v[root] >= v[c])
			return;
		u32 t = v[root];
		v[root] = v[c];
		v[c] = t;
		root = c;
	}
}

u64 user_sort_u32(u64 arg)
{
	struct sort_job *j = (struct sort_job *)arg;
	u32 *v = j->v;
	u64 n = j->n;
	for (u64 i = n / 2; i-- > 0;)
		sift(v, i, n);
	for (u64 end = n; end > 1; end--) {
		u32 t = v[0];
		v[0] = v[end - 1];
		v[end - 1] = t;
		sift(v, 0, end - 1);
	}
	return 0;
}

u64 user_fnv1a(u64 arg)
{
	struct hash_job *j = (struct hash_job *)arg;
	const u8 *p = (const u8 *)j->addr;
	u64 h = 0xcbf29ce484222325ull;
	for (u64 i = 0; i < j->size; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}
