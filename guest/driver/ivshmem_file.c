// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem: the character device /dev/ivshmemN — mmap of BAR2, event
 * counts (read, poll, IVSHMEM_IOC_WAIT), doorbells (IVSHMEM_IOC_RING) and
 * peer-change events (IVSHMEM_IOC_NOTIFY).
 */
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/poll.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "ivshmem.h"
#include "ivshmem_drv.h"

/* A fault maps up to this much of BAR2 at once (aligned), not one page. */
#define IVSHMEM_FAULT_CHUNK (2UL << 20)

static int ivshmem_open(struct inode *inode, struct file *filp)
{
	struct ivshmem_dev *idev = container_of(inode->i_cdev, struct ivshmem_dev, cdev);
	struct ivshmem_file *ifile;
	u32 i;

	ifile = kzalloc(sizeof(*ifile), GFP_KERNEL);
	if (!ifile)
		return -ENOMEM;
	ifile->seen = kcalloc(max(idev->nvec, 1U), sizeof(u64), GFP_KERNEL);
	if (!ifile->seen) {
		kfree(ifile);
		return -ENOMEM;
	}
	/* A new file reports events from now on, not those before it. */
	for (i = 0; i < idev->nvec; i++)
		ifile->seen[i] = atomic64_read(&idev->vecs[i].count);
	mutex_init(&ifile->read_lock);
	ifile->idev = idev;
	ifile->filp = filp;

	down_read(&idev->lock);
	if (idev->dead) {
		up_read(&idev->lock);
		kfree(ifile->seen);
		kfree(ifile);
		return -ENODEV;
	}
	get_device(&idev->dev);
	mutex_lock(&idev->files_lock);
	list_add(&ifile->node, &idev->files);
	mutex_unlock(&idev->files_lock);
	up_read(&idev->lock);

	filp->private_data = ifile;
	return nonseekable_open(inode, filp);
}

static int ivshmem_release(struct inode *inode, struct file *filp)
{
	struct ivshmem_file *ifile = filp->private_data;
	struct ivshmem_dev *idev = ifile->idev;

	mutex_lock(&idev->files_lock);
	list_del(&ifile->node);
	mutex_unlock(&idev->files_lock);
	if (ifile->pr_sub)
		ivshmem_pr_unsubscribe(idev);
	kfree(ifile->seen);
	kfree(ifile);
	put_device(&idev->dev);
	return 0;
}

/* Called by remove() after `dead` is set: no fault can insert pfns again. */
void ivshmem_zap_mappings(struct ivshmem_dev *idev)
{
	struct ivshmem_file *ifile;

	mutex_lock(&idev->files_lock);
	list_for_each_entry(ifile, &idev->files, node)
		unmap_mapping_range(ifile->filp->f_mapping, 0, 0, 1);
	mutex_unlock(&idev->files_lock);
}

/*
 * Insert BAR2 pfns on demand. vmf_insert_pfn() takes the memory type from
 * the PAT reservation made at probe (see ivshmem_map_shm), so the user
 * mapping has the same type as the kernel's: write-back by default.
 */
static vm_fault_t ivshmem_fault(struct vm_fault *vmf)
{
	struct vm_area_struct *vma = vmf->vma;
	struct ivshmem_file *ifile = vma->vm_file->private_data;
	struct ivshmem_dev *idev = ifile->idev;
	unsigned long base = PHYS_PFN(idev->shm_phys);
	unsigned long pages = idev->shm_size >> PAGE_SHIFT;
	unsigned long chunk, addr;
	vm_fault_t ret = VM_FAULT_SIGBUS;

	down_read(&idev->lock);
	/* mmap() bounded the vma to BAR2 and it cannot grow; check anyway. */
	if (idev->dead || vmf->pgoff >= pages)
		goto out;
	ret = vmf_insert_pfn(vma, vmf->address & PAGE_MASK, base + vmf->pgoff);
	if (ret & VM_FAULT_ERROR)
		goto out;

	/* Map the rest of the surrounding chunk too: one fault per 2 MiB. */
	chunk = ALIGN_DOWN(vmf->address, IVSHMEM_FAULT_CHUNK);
	for (addr = max(chunk, vma->vm_start);
	     addr < min(chunk + IVSHMEM_FAULT_CHUNK, vma->vm_end); addr += PAGE_SIZE) {
		unsigned long pgoff = vma->vm_pgoff + ((addr - vma->vm_start) >> PAGE_SHIFT);

		if (pgoff >= pages ||
		    (vmf_insert_pfn(vma, addr, base + pgoff) & VM_FAULT_ERROR))
			break;
	}
out:
	up_read(&idev->lock);
	return ret;
}

static const struct vm_operations_struct ivshmem_vm_ops = {
	.fault = ivshmem_fault,
};

static int ivshmem_mmap(struct file *filp, struct vm_area_struct *vma)
{
	struct ivshmem_file *ifile = filp->private_data;
	struct ivshmem_dev *idev = ifile->idev;
	unsigned long pages = idev->shm_size >> PAGE_SHIFT;
	unsigned long len = vma_pages(vma);

	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL; /* a private copy of device memory makes no sense */
	if (vma->vm_pgoff >= pages || len > pages - vma->vm_pgoff)
		return -EINVAL;
	if (READ_ONCE(idev->dead))
		return -ENODEV;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_set(vma, VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP);
#else
	vma->vm_flags |= VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
#endif
	vma->vm_ops = &ivshmem_vm_ops;
	return 0;
}

static bool ivshmem_changed(struct ivshmem_file *ifile)
{
	struct ivshmem_dev *idev = ifile->idev;
	u32 i;

	for (i = 0; i < idev->nvec; i++)
		if (atomic64_read(&idev->vecs[i].count) != ifile->seen[i])
			return true;
	/* pr_seen is only read once pr_sub is set (IVSHMEM_IOC_NOTIFY). */
	return smp_load_acquire(&ifile->pr_sub) &&
	       (u64)atomic64_read(&idev->pr_changes) != READ_ONCE(ifile->pr_seen);
}

static ssize_t ivshmem_read(struct file *filp, char __user *buf, size_t len,
			    loff_t *ppos)
{
	struct ivshmem_file *ifile = filp->private_data;
	struct ivshmem_dev *idev = ifile->idev;
	u64 __user *out = (u64 __user *)buf;
	u32 n, i;
	int ret;

	if (len < sizeof(u64))
		return -EINVAL;
	if (!idev->nvec)
		return 0;
	n = min_t(size_t, len / sizeof(u64), idev->nvec);

	if (mutex_lock_interruptible(&ifile->read_lock))
		return -ERESTARTSYS;
	for (;;) {
		if (READ_ONCE(idev->dead)) {
			ret = -ENODEV;
			goto out;
		}
		if (ivshmem_changed(ifile))
			break;
		if (filp->f_flags & O_NONBLOCK) {
			ret = -EAGAIN;
			goto out;
		}
		ret = wait_event_interruptible(idev->wq,
					       READ_ONCE(idev->dead) || ivshmem_changed(ifile));
		if (ret)
			goto out;
	}
	for (i = 0; i < n; i++) {
		u64 now = atomic64_read(&idev->vecs[i].count);

		if (put_user(now, out + i)) {
			ret = -EFAULT;
			goto out;
		}
		ifile->seen[i] = now;
	}
	/* A subscribed file: the peer-change count follows the vectors'. */
	if (smp_load_acquire(&ifile->pr_sub) && len / sizeof(u64) > idev->nvec) {
		u64 now = atomic64_read(&idev->pr_changes);

		if (put_user(now, out + n)) {
			ret = -EFAULT;
			goto out;
		}
		WRITE_ONCE(ifile->pr_seen, now);
		n++;
	}
	ret = n * sizeof(u64);
out:
	mutex_unlock(&ifile->read_lock);
	return ret;
}

static __poll_t ivshmem_poll(struct file *filp, poll_table *wait)
{
	struct ivshmem_file *ifile = filp->private_data;
	struct ivshmem_dev *idev = ifile->idev;

	poll_wait(filp, &idev->wq, wait);
	if (READ_ONCE(idev->dead))
		return EPOLLHUP | EPOLLERR;
	if (ivshmem_changed(ifile))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static long ivshmem_ioctl_info(struct ivshmem_dev *idev, void __user *arg)
{
	struct ivshmem_info info = {
		.size = idev->shm_size,
		.vectors = idev->nvec,
		.cache = idev->cache,
	};

	if (READ_ONCE(idev->dead))
		return -ENODEV;
	info.position = ivshmem_position(idev);
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

static long ivshmem_ioctl_ring(struct ivshmem_dev *idev, void __user *arg)
{
	struct ivshmem_ring ring;
	long ret = 0;

	if (copy_from_user(&ring, arg, sizeof(ring)))
		return -EFAULT;
	if (ring.reserved)
		return -EINVAL;
	down_read(&idev->lock);
	if (idev->dead)
		ret = -ENODEV;
	else
		iowrite32(((u32)ring.peer << 16) | ring.vector,
			  idev->regs + IVSHMEM_REG_DOORBELL);
	up_read(&idev->lock);
	return ret;
}

static long ivshmem_ioctl_wait(struct ivshmem_file *ifile, void __user *arg)
{
	struct ivshmem_dev *idev = ifile->idev;
	struct ivshmem_wait w;
	atomic64_t *count;
	long ret;

	if (copy_from_user(&w, arg, sizeof(w)))
		return -EFAULT;
	if (w.vector == IVSHMEM_EVENT_PEERS && smp_load_acquire(&ifile->pr_sub))
		count = &idev->pr_changes;
	else if (w.vector < idev->nvec)
		count = &idev->vecs[w.vector].count;
	else
		return -EINVAL;

#define IVSHMEM_WAIT_DONE (READ_ONCE(idev->dead) || (u64)atomic64_read(count) != w.count)
	if (w.timeout_ms < 0) {
		ret = wait_event_interruptible(idev->wq, IVSHMEM_WAIT_DONE);
	} else if (w.timeout_ms == 0) {
		ret = IVSHMEM_WAIT_DONE;
	} else {
		ret = wait_event_interruptible_timeout(idev->wq, IVSHMEM_WAIT_DONE,
						       msecs_to_jiffies(w.timeout_ms));
	}
#undef IVSHMEM_WAIT_DONE
	if (ret < 0)
		return -EINTR; /* no restart: the caller owns the timeout */
	if (READ_ONCE(idev->dead))
		return -ENODEV;

	if ((u64)atomic64_read(count) == w.count)
		ret = -ETIMEDOUT;
	else
		ret = 0;
	w.count = atomic64_read(count);
	if (copy_to_user(arg, &w, sizeof(w)))
		return -EFAULT;
	return ret;
}

/*
 * Subscribe this file to peer/link change events. Serialised with read()
 * by read_lock, so pr_seen starts at the count returned here.
 */
static long ivshmem_ioctl_notify(struct ivshmem_file *ifile, void __user *arg)
{
	struct ivshmem_dev *idev = ifile->idev;
	struct ivshmem_notify nt;
	int used;
	long ret;

	if (copy_from_user(&nt, arg, sizeof(nt)))
		return -EFAULT;
	if (nt.flags)
		return -EINVAL;
	if (mutex_lock_interruptible(&ifile->read_lock))
		return -ERESTARTSYS;
	if (ifile->pr_sub) {
		used = READ_ONCE(idev->pr_vec);
		ret = nt.vector != IVSHMEM_NOTIFY_ANY && nt.vector != used ? -EBUSY : 0;
	} else {
		ret = ivshmem_pr_subscribe(idev, nt.vector, &used);
		if (!ret) {
			WRITE_ONCE(ifile->pr_seen, atomic64_read(&idev->pr_changes));
			smp_store_release(&ifile->pr_sub, true);
		}
	}
	if (!ret) {
		nt.vector = used;
		nt.count = ifile->pr_seen;
	}
	mutex_unlock(&ifile->read_lock);
	if (ret)
		return ret;
	return copy_to_user(arg, &nt, sizeof(nt)) ? -EFAULT : 0;
}

static long ivshmem_ioctl(struct file *filp, unsigned int cmd, unsigned long arg)
{
	struct ivshmem_file *ifile = filp->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case IVSHMEM_IOC_INFO:
		return ivshmem_ioctl_info(ifile->idev, uarg);
	case IVSHMEM_IOC_RING:
		return ivshmem_ioctl_ring(ifile->idev, uarg);
	case IVSHMEM_IOC_WAIT:
		return ivshmem_ioctl_wait(ifile, uarg);
	case IVSHMEM_IOC_NOTIFY:
		return ivshmem_ioctl_notify(ifile, uarg);
	default:
		return -ENOTTY;
	}
}

const struct file_operations ivshmem_fops = {
	.owner = THIS_MODULE,
	.open = ivshmem_open,
	.release = ivshmem_release,
	.mmap = ivshmem_mmap,
	.read = ivshmem_read,
	.poll = ivshmem_poll,
	.unlocked_ioctl = ivshmem_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 12, 0)
	.llseek = no_llseek,
#endif
};
