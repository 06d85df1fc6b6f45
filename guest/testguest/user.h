/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Code that runs at CPL3 through user_call(). On PVM user mode runs natively
 * while kernel mode is emulated, so every long loop lives here. These
 * functions touch only memory (never ports or privileged state).
 */
#ifndef TESTGUEST_USER_H
#define TESTGUEST_USER_H

#include "common.h"

struct copy_job {
	u64 dst, src, size, iters;
	u64 cycles;	/* out: rdtsc cycles for all iters */
};
/* arg = struct copy_job *: one untimed warm-up copy, then iters timed ones. */
u64 user_copy_timed(u64 arg);

struct fill_job {
	u64 dst, size, seed;
};
/* arg = struct fill_job *: dst[i] = seed + i for each u64 (size rounded down). */
u64 user_fill(u64 arg);

/* arg = u32 *: sorts (count, samples...) ascending in place. */
struct sort_job {
	u32 *v;
	u64 n;
};
u64 user_sort_u32(u64 arg);

struct hash_job {
	u64 addr, size;
};
/* arg = struct hash_job *: the 64-bit FNV-1a hash of the bytes. */
u64 user_fnv1a(u64 arg);

#endif
