/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ivshmem driver internals shared by the PCI side (ivshmem_pci.c) and the
 * character device side (ivshmem_file.c).
 */
#ifndef IVSHMEM_DRV_H
#define IVSHMEM_DRV_H

#include <linux/atomic.h>
#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/spinlock.h>
#include <linux/wait.h>

/* BAR0 register offsets (ivshmem-spec.rst). */
#define IVSHMEM_REG_INTR_MASK 0x00
#define IVSHMEM_REG_INTR_STATUS 0x04
#define IVSHMEM_REG_IV_POSITION 0x08
#define IVSHMEM_REG_DOORBELL 0x0c
#define IVSHMEM_BAR0_MIN 16

/*
 * ivvmm's peer-presence extension (docs/ivshmem-presence.md): announced by
 * a vendor-specific capability with signature "IVPR", registers in BAR0
 * from 0x80 (QEMU reads them as 0). Only touched when the capability is
 * there.
 */
#define IVSHMEM_PR_SIGNATURE 0x52505649 /* "IVPR", little-endian */
#define IVSHMEM_PR_CAP_LEN 12
#define IVSHMEM_PR_CAP_SIG 4		/* offsets inside the capability */
#define IVSHMEM_PR_CAP_BAR 8
#define IVSHMEM_BAR0_PR 256		/* BAR0 bytes the extension needs */
#define IVSHMEM_REG_PR_MAGIC 0x80
#define IVSHMEM_REG_PR_VERSION 0x84
#define IVSHMEM_REG_PR_GENERATION 0x88
#define IVSHMEM_REG_PR_LINK 0x8c
#define IVSHMEM_REG_PR_OWN_ID 0x90
#define IVSHMEM_REG_PR_PEER_COUNT 0x94
#define IVSHMEM_REG_PR_PEER_SELECT 0x98
#define IVSHMEM_REG_PR_PEER_NEXT 0x9c
#define IVSHMEM_REG_PR_PEER_VECTORS 0xa0
#define IVSHMEM_REG_PR_NOTIFY 0xa4
#define IVSHMEM_REG_PR_REJOINS 0xa8
#define IVSHMEM_PR_NOTIFY_ON 0x80000000u
#define IVSHMEM_PR_NO_PEER 0xffffffffu
#define IVSHMEM_PR_LINK_CONNECTED 1
#define IVSHMEM_PR_LINK_LOST 2
#define IVSHMEM_PR_LINK_REJOINED 3

struct ivshmem_dev;

struct ivshmem_vector {
	struct ivshmem_dev *idev;
	atomic64_t count; /* interrupts received; only ever grows */
	unsigned int irq;
	bool requested;
	char name[32];
};

/*
 * One per bound PCI function. Its lifetime is that of `dev` (freed in the
 * device release callback): open files and the cdev hold references, so it
 * outlives an unbind. Everything that touches hardware checks `dead` under
 * `lock`; remove() sets it under the write lock before tearing down.
 */
struct ivshmem_dev {
	struct device dev;
	struct cdev cdev;
	struct pci_dev *pdev;

	struct rw_semaphore lock; /* guards dead and the mappings below */
	bool dead;
	void __iomem *regs;	/* BAR0 */
	void __iomem *shm_kva;	/* BAR2; holds its PAT memtype reservation */
	phys_addr_t shm_phys;
	u64 shm_size;
	u32 cache_req;		/* IVSHMEM_CACHE_* asked for (module parameter) */
	u32 cache;		/* IVSHMEM_CACHE_* the mapping really has */

	u32 nvec;
	struct ivshmem_vector *vecs;
	wait_queue_head_t wq;	/* woken on every interrupt and on removal */

	struct mutex files_lock;	/* guards files */
	struct list_head files;	/* open ivshmem_file, for unmapping on remove */

	/* Peer presence; all unused when !pr (QEMU, plain devices). */
	bool pr;		/* the IVPR extension is there (constant after probe) */
	struct mutex pr_lock;	/* serialises PR_PEER_SELECT walks and PR_NOTIFY */
	u32 pr_subs;		/* files subscribed to change events (pr_lock) */
	int pr_vec;		/* vector PR_NOTIFY signals, -1: none (READ_ONCE in irq) */
	spinlock_t pr_gen_lock;	/* guards pr_gen_seen against irq and process */
	u32 pr_gen_seen;	/* PR_GENERATION as last compared */
	atomic64_t pr_changes;	/* generation changes seen; only ever grows */
};

struct ivshmem_file {
	struct list_head node;
	struct ivshmem_dev *idev;
	struct file *filp;
	struct mutex read_lock;	/* serialises read() updates of seen[] */
	u64 *seen;		/* counts as of this file's last read() */
	bool pr_sub;		/* subscribed to change events (IVSHMEM_IOC_NOTIFY) */
	u64 pr_seen;		/* pr_changes as of this file's last read() */
};

extern const struct file_operations ivshmem_fops;

s32 ivshmem_position(struct ivshmem_dev *idev);
void ivshmem_zap_mappings(struct ivshmem_dev *idev);
int ivshmem_pr_subscribe(struct ivshmem_dev *idev, int vector, int *used);
void ivshmem_pr_unsubscribe(struct ivshmem_dev *idev);

#endif /* IVSHMEM_DRV_H */
