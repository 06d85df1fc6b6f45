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
#include <linux/wait.h>

/* BAR0 register offsets (ivshmem-spec.rst). */
#define IVSHMEM_REG_INTR_MASK 0x00
#define IVSHMEM_REG_INTR_STATUS 0x04
#define IVSHMEM_REG_IV_POSITION 0x08
#define IVSHMEM_REG_DOORBELL 0x0c
#define IVSHMEM_BAR0_MIN 16

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
};

struct ivshmem_file {
	struct list_head node;
	struct ivshmem_dev *idev;
	struct file *filp;
	struct mutex read_lock;	/* serialises read() updates of seen[] */
	u64 *seen;		/* counts as of this file's last read() */
};

extern const struct file_operations ivshmem_fops;

s32 ivshmem_position(struct ivshmem_dev *idev);
void ivshmem_zap_mappings(struct ivshmem_dev *idev);

#endif /* IVSHMEM_DRV_H */
