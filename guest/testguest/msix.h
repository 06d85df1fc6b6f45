/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* MSI-X of an ivshmem doorbell device: table in BAR1 at 0, PBA at 0x800. */
#ifndef TESTGUEST_MSIX_H
#define TESTGUEST_MSIX_H

#include "ivshmem.h"

#define MSIX_CTRL_ENABLE	0x8000
#define MSIX_CTRL_FMASK		0x4000

struct msix {
	struct ivshmem_dev *dev;
	u8 cap;
	u32 nvec;	/* table size */
	u64 table;	/* guest-physical address of entry 0 */
	u64 pba;
};

/*
 * Programs entry v -> LAPIC of this CPU, IDT vector VEC_MSIX_BASE + v, for
 * every v < min(table size, VEC_MSIX_COUNT); entries in mask_entries stay
 * masked. Enables the LAPIC; enables MSI-X (with the function mask if
 * function_mask) unless leave_disabled. Fails the test without MSI-X.
 */
void msix_setup(struct msix *m, struct ivshmem_dev *d, u32 mask_entries, bool function_mask,
		bool leave_disabled);
void msix_mask_entry(struct msix *m, u32 v, bool masked);
void msix_set_ctrl(struct msix *m, u16 set, u16 clear);
bool msix_pending(struct msix *m, u32 v);

/* Our own peer id and the doorbell register of device d. */
static inline u32 ivshmem_id(const struct ivshmem_dev *d)
{
	return mmio_read32(d->bar[0].addr + REG_IVPOSITION);
}
static inline void ring(const struct ivshmem_dev *d, u32 peer, u32 vector)
{
	mmio_write32(d->bar[0].addr + REG_DOORBELL, (peer << 16) | vector);
}

/* irq_count of MSI-X entry v. */
#define MSIX_COUNT(v) (irq_count[VEC_MSIX_BASE + (v)])

#endif
