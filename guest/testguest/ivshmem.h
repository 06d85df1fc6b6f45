/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* ivshmem (1af4:1110) discovery and register layout (QEMU's ivshmem spec). */
#ifndef TESTGUEST_IVSHMEM_H
#define TESTGUEST_IVSHMEM_H

#include "common.h"
#include "pci.h"

#define IVSHMEM_VENDOR	0x1af4
#define IVSHMEM_DEVICE	0x1110
#define IVSHMEM_MAX	8

/* BAR0 registers */
#define REG_INTRMASK	0x00
#define REG_INTRSTATUS	0x04
#define REG_IVPOSITION	0x08
#define REG_DOORBELL	0x0c

/* What the host writes before boot and checks after exit (ivshmem-data). */
#define HOST_PATTERN	0x1111222233334444ull
#define GUEST_PATTERN	0x5555666677778888ull

/* Rendezvous layout in BAR2 for the doorbell cases (see README). */
#define SHM_PONG	0x000	/* u32 "PONG", u32 id, u64 nonce, u64 ready (= PING's nonce) */
#define SHM_PING	0x040	/* u32 "PING", u32 id, u64 echo of PONG's nonce, u64 nonce */
#define SHM_MASK	0x080	/* u32 "MASK", u32 id (msix-mask: ring me now); host: u32 "RUNG", u32 id */
#define SHM_DONE	0x0c0	/* u32 "DONE" (ping finished) */
#define SHM_PING_SEQ	0x100	/* u64, mode=poll */
#define SHM_PONG_SEQ	0x140	/* u64, mode=poll */
#define SHM_SAMPLES	0x10000	/* u32 latency per round, ping side */
#define MAGIC(a, b, c, d) ((u32)(a) | (u32)(b) << 8 | (u32)(c) << 16 | (u32)(d) << 24)

struct ivshmem_dev {
	struct pci_fn f;
	struct pci_bar bar[3];	/* BAR0 registers, BAR1 MSI-X, BAR2 memory */
	u8 msix_cap;		/* 0 in plain mode */
};

/*
 * Finds every ivshmem function in scan order and sizes its BARs. With
 * `enable`, also turns on memory decode and bus mastering and maps BAR0 and
 * BAR2. Fails the test if there is none.
 */
int ivshmem_find(struct ivshmem_dev *out, int max, bool enable);

/* Prints one `check NAME ok|bad got=0x.. want=0x..` line; returns ok. */
bool check(const char *name, u64 got, u64 want);

#endif
