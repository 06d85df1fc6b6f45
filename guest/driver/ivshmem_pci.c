// SPDX-License-Identifier: GPL-2.0
/*
 * ivshmem: PCI side of the ivvmm guest driver for the ivshmem device
 * (1af4:1110, plain and doorbell): probe/remove, MSI-X vectors, sysfs
 * attributes, ivvmm's peer-presence extension and the module glue.
 */
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/slab.h>
#ifdef CONFIG_X86
#include <asm/pgtable.h>
#endif

#include "ivshmem.h"
#include "ivshmem_drv.h"

#define IVSHMEM_MAX_DEVS 64

static char *cache = "wb";
module_param(cache, charp, 0444);
MODULE_PARM_DESC(cache,
		 "memory type of mmap()ed BAR2: wb (default), wc or uc; applies to devices bound afterwards");

static dev_t ivshmem_devt;
static DEFINE_IDA(ivshmem_ida);

s32 ivshmem_position(struct ivshmem_dev *idev)
{
	s32 pos = -1;

	down_read(&idev->lock);
	if (!idev->dead)
		pos = (s32)ioread32(idev->regs + IVSHMEM_REG_IV_POSITION);
	up_read(&idev->lock);
	return pos;
}

/* Names as in /sys/kernel/debug/x86/pat_memtype_list. */
static const char *cache_name(u32 cache)
{
	switch (cache) {
	case IVSHMEM_CACHE_WB:
		return "write-back";
	case IVSHMEM_CACHE_WC:
		return "write-combining";
	case IVSHMEM_CACHE_UC:
		return "uncached";
	case IVSHMEM_CACHE_UC_MINUS:
		return "uncached-minus";
	case IVSHMEM_CACHE_WT:
		return "write-through";
	case IVSHMEM_CACHE_WP:
		return "write-protected";
	default:
		return "unknown";
	}
}

static ssize_t size_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%llu\n", idev->shm_size);
}
static DEVICE_ATTR_RO(size);

static ssize_t position_show(struct device *dev, struct device_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%d\n", ivshmem_position(dev_get_drvdata(dev)));
}
static DEVICE_ATTR_RO(position);

static ssize_t vectors_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%u\n", idev->nvec);
}
static DEVICE_ATTR_RO(vectors);

static ssize_t cache_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%s\n", cache_name(idev->cache));
}
static DEVICE_ATTR_RO(cache);

/* Event counts, one per vector, space separated (for debugging). */
static ssize_t events_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);
	int len = 0;
	u32 i;

	for (i = 0; i < idev->nvec; i++)
		len += sysfs_emit_at(buf, len, "%s%lld", i ? " " : "",
				     (long long)atomic64_read(&idev->vecs[i].count));
	len += sysfs_emit_at(buf, len, "\n");
	return len;
}
static DEVICE_ATTR_RO(events);

/* ---- Peer presence (docs/ivshmem-presence.md) ---- */

/*
 * Compare PR_GENERATION with what we saw last; count a change. Called from
 * the notify vector's handler and when notification is turned on. Callers
 * hold a reference that keeps regs mapped (a requested irq, or idev->lock
 * read with !dead).
 */
static void ivshmem_pr_check(struct ivshmem_dev *idev)
{
	unsigned long flags;
	u32 gen;

	spin_lock_irqsave(&idev->pr_gen_lock, flags);
	gen = ioread32(idev->regs + IVSHMEM_REG_PR_GENERATION);
	if (gen != idev->pr_gen_seen) {
		idev->pr_gen_seen = gen;
		atomic64_inc(&idev->pr_changes);
	}
	spin_unlock_irqrestore(&idev->pr_gen_lock, flags);
}

/*
 * One presence register, or -EOPNOTSUPP (no extension) / -ENODEV (gone).
 * `*val` is only written on success.
 */
static int ivshmem_pr_read(struct ivshmem_dev *idev, unsigned int reg, u32 *val)
{
	int ret = 0;

	if (!idev->pr)
		return -EOPNOTSUPP;
	down_read(&idev->lock);
	if (idev->dead)
		ret = -ENODEV;
	else
		*val = ioread32(idev->regs + reg);
	up_read(&idev->lock);
	return ret;
}

static ssize_t ivshmem_pr_show(struct ivshmem_dev *idev, unsigned int reg, char *buf)
{
	u32 val;
	int ret = ivshmem_pr_read(idev, reg, &val);

	if (ret == -EOPNOTSUPP)
		return sysfs_emit(buf, "unsupported\n");
	if (ret)
		return ret;
	return sysfs_emit(buf, "%u\n", val);
}

static ssize_t generation_show(struct device *dev, struct device_attribute *attr,
			       char *buf)
{
	return ivshmem_pr_show(dev_get_drvdata(dev), IVSHMEM_REG_PR_GENERATION, buf);
}
static DEVICE_ATTR_RO(generation);

static ssize_t own_id_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	return ivshmem_pr_show(dev_get_drvdata(dev), IVSHMEM_REG_PR_OWN_ID, buf);
}
static DEVICE_ATTR_RO(own_id);

static ssize_t rejoins_show(struct device *dev, struct device_attribute *attr,
			    char *buf)
{
	return ivshmem_pr_show(dev_get_drvdata(dev), IVSHMEM_REG_PR_REJOINS, buf);
}
static DEVICE_ATTR_RO(rejoins);

static ssize_t link_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	u32 link;
	int ret = ivshmem_pr_read(dev_get_drvdata(dev), IVSHMEM_REG_PR_LINK, &link);

	if (ret == -EOPNOTSUPP)
		return sysfs_emit(buf, "unsupported\n");
	if (ret)
		return ret;
	switch (link) {
	case IVSHMEM_PR_LINK_CONNECTED:
		return sysfs_emit(buf, "connected\n");
	case IVSHMEM_PR_LINK_LOST:
		return sysfs_emit(buf, "lost\n");
	case IVSHMEM_PR_LINK_REJOINED:
		return sysfs_emit(buf, "rejoined\n");
	default:
		return sysfs_emit(buf, "unknown(%u)\n", link);
	}
}
static DEVICE_ATTR_RO(link);

/* The vector change notifications go to: `none`, or its number. */
static ssize_t notify_show(struct device *dev, struct device_attribute *attr,
			   char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);
	int vec;

	if (!idev->pr)
		return sysfs_emit(buf, "unsupported\n");
	vec = READ_ONCE(idev->pr_vec);
	if (vec < 0)
		return sysfs_emit(buf, "none\n");
	return sysfs_emit(buf, "%d\n", vec);
}
static DEVICE_ATTR_RO(notify);

/* A generation that keeps changing during this many walks: -EAGAIN. */
#define IVSHMEM_PR_WALK_TRIES 16
/* Peer ids are 16-bit (the Doorbell register): a walk visits no more. */
#define IVSHMEM_PR_MAX_PEERS 65536

/*
 * `id vectors` per present peer, ourselves not included, as one
 * consistent snapshot: the walk of docs/ivshmem-presence.md, repeated
 * while PR_GENERATION changed under it. Output that would not fit the
 * sysfs page (over ~400 peers) is cut at a whole line.
 */
static ssize_t peers_show(struct device *dev, struct device_attribute *attr,
			  char *buf)
{
	struct ivshmem_dev *idev = dev_get_drvdata(dev);
	void __iomem *r = idev->regs;
	ssize_t ret = -EAGAIN;
	int tries, len, n;
	u32 gen, id, next, vecs;
	char line[24];

	if (!idev->pr)
		return sysfs_emit(buf, "unsupported\n");
	if (mutex_lock_interruptible(&idev->pr_lock))
		return -EINTR;
	down_read(&idev->lock);
	if (idev->dead) {
		ret = -ENODEV;
		goto out;
	}
	for (tries = 0; tries < IVSHMEM_PR_WALK_TRIES; tries++) {
		len = 0;
		gen = ioread32(r + IVSHMEM_REG_PR_GENERATION);
		for (id = 0, n = 0; n < IVSHMEM_PR_MAX_PEERS; n++) {
			iowrite32(id, r + IVSHMEM_REG_PR_PEER_SELECT);
			next = ioread32(r + IVSHMEM_REG_PR_PEER_NEXT);
			/* "none", or a device that walks backwards: done. */
			if (next == IVSHMEM_PR_NO_PEER || next < id)
				break;
			iowrite32(next, r + IVSHMEM_REG_PR_PEER_SELECT);
			vecs = ioread32(r + IVSHMEM_REG_PR_PEER_VECTORS);
			snprintf(line, sizeof(line), "%u %u\n", next, vecs);
			if (len + strlen(line) >= PAGE_SIZE)
				break;
			len += sysfs_emit_at(buf, len, "%s", line);
			id = next + 1;
			if (!id) /* next was 0xfffffffe... wrapped: stop */
				break;
		}
		if (ioread32(r + IVSHMEM_REG_PR_GENERATION) == gen) {
			ret = len;
			break;
		}
	}
out:
	up_read(&idev->lock);
	mutex_unlock(&idev->pr_lock);
	return ret;
}
static DEVICE_ATTR_RO(peers);

/*
 * A file asks for change events: the first one turns PR_NOTIFY on for
 * `vector` (IVSHMEM_NOTIFY_ANY: the last vector); later ones share it.
 * Returns 0 and the vector in *used, or -errno (see IVSHMEM_IOC_NOTIFY).
 */
int ivshmem_pr_subscribe(struct ivshmem_dev *idev, int vector, int *used)
{
	int ret = 0, cur;

	if (!idev->pr)
		return -EOPNOTSUPP;
	if (!idev->nvec)
		return -ENXIO;
	if (vector < IVSHMEM_NOTIFY_ANY || (vector >= 0 && (u32)vector >= idev->nvec))
		return -EINVAL;
	mutex_lock(&idev->pr_lock);
	down_read(&idev->lock);
	if (idev->dead) {
		ret = -ENODEV;
		goto out;
	}
	cur = idev->pr_vec;
	if (cur >= 0) {
		if (vector != IVSHMEM_NOTIFY_ANY && vector != cur) {
			ret = -EBUSY;
			goto out;
		}
	} else {
		cur = vector == IVSHMEM_NOTIFY_ANY ? (int)idev->nvec - 1 : vector;
		spin_lock_irq(&idev->pr_gen_lock);
		idev->pr_gen_seen = ioread32(idev->regs + IVSHMEM_REG_PR_GENERATION);
		spin_unlock_irq(&idev->pr_gen_lock);
		WRITE_ONCE(idev->pr_vec, cur);
		iowrite32(IVSHMEM_PR_NOTIFY_ON | cur, idev->regs + IVSHMEM_REG_PR_NOTIFY);
		/* A change between the read above and the write: count it. */
		ivshmem_pr_check(idev);
		dev_dbg(&idev->pdev->dev, "peer change notification on vector %d\n", cur);
	}
	idev->pr_subs++;
	*used = cur;
out:
	up_read(&idev->lock);
	mutex_unlock(&idev->pr_lock);
	return ret;
}

/* A subscribed file closes: the last one turns PR_NOTIFY off. */
void ivshmem_pr_unsubscribe(struct ivshmem_dev *idev)
{
	mutex_lock(&idev->pr_lock);
	if (!--idev->pr_subs) {
		down_read(&idev->lock);
		if (!idev->dead)
			iowrite32(0, idev->regs + IVSHMEM_REG_PR_NOTIFY);
		up_read(&idev->lock);
		WRITE_ONCE(idev->pr_vec, -1);
	}
	mutex_unlock(&idev->pr_lock);
}

/*
 * Find the IVPR vendor capability. Returns true when the device has the
 * extension and it is usable: registers in BAR0 (the only place version 1
 * puts them), BAR0 large enough.
 */
static bool ivshmem_pr_detect(struct pci_dev *pdev)
{
	u8 pos, len, bar;
	u32 sig;

	for (pos = pci_find_capability(pdev, PCI_CAP_ID_VNDR); pos;
	     pos = pci_find_next_capability(pdev, pos, PCI_CAP_ID_VNDR)) {
		pci_read_config_byte(pdev, pos + PCI_CAP_FLAGS, &len);
		if (len < IVSHMEM_PR_CAP_LEN)
			continue;
		pci_read_config_dword(pdev, pos + IVSHMEM_PR_CAP_SIG, &sig);
		if (sig != IVSHMEM_PR_SIGNATURE)
			continue;
		pci_read_config_byte(pdev, pos + IVSHMEM_PR_CAP_BAR, &bar);
		if (bar != 0 || pci_resource_len(pdev, 0) < IVSHMEM_BAR0_PR) {
			dev_warn(&pdev->dev, "IVPR capability names BAR%u (%llu bytes of BAR0): peer presence not used\n",
				 bar, (unsigned long long)pci_resource_len(pdev, 0));
			return false;
		}
		return true;
	}
	return false;
}

/* With BAR0 mapped: the registers must agree with the capability. */
static bool ivshmem_pr_check_regs(struct ivshmem_dev *idev)
{
	u32 magic = ioread32(idev->regs + IVSHMEM_REG_PR_MAGIC);
	u32 version = ioread32(idev->regs + IVSHMEM_REG_PR_VERSION);

	if (magic != IVSHMEM_PR_SIGNATURE || version < 1) {
		dev_warn(&idev->pdev->dev, "IVPR capability but PR_MAGIC %#x, PR_VERSION %u: peer presence not used\n",
			 magic, version);
		return false;
	}
	/* A driver before us may have left it on. */
	iowrite32(0, idev->regs + IVSHMEM_REG_PR_NOTIFY);
	return true;
}

static struct attribute *ivshmem_attrs[] = {
	&dev_attr_size.attr,	   &dev_attr_position.attr, &dev_attr_vectors.attr,
	&dev_attr_cache.attr,	   &dev_attr_events.attr,   &dev_attr_peers.attr,
	&dev_attr_link.attr,	   &dev_attr_generation.attr, &dev_attr_own_id.attr,
	&dev_attr_rejoins.attr,	   &dev_attr_notify.attr,   NULL,
};
ATTRIBUTE_GROUPS(ivshmem);

static struct class ivshmem_class = {
	.name = "ivshmem",
	.dev_groups = ivshmem_groups,
};

static irqreturn_t ivshmem_irq(int irq, void *data)
{
	struct ivshmem_vector *vec = data;
	struct ivshmem_dev *idev = vec->idev;

	/*
	 * The notify vector may carry doorbells too: count the interrupt for
	 * the vector in any case, and a change only if the generation moved.
	 */
	if (READ_ONCE(idev->pr_vec) == vec - idev->vecs)
		ivshmem_pr_check(idev);
	atomic64_inc(&vec->count);
	wake_up_interruptible_all(&idev->wq);
	return IRQ_HANDLED;
}

static void ivshmem_dev_release(struct device *dev)
{
	struct ivshmem_dev *idev = container_of(dev, struct ivshmem_dev, dev);

	ida_free(&ivshmem_ida, MINOR(dev->devt));
	kfree(idev->vecs);
	kfree(idev);
}

static int ivshmem_parse_cache(struct pci_dev *pdev, u32 *out)
{
	if (!strcmp(cache, "wb")) {
		*out = IVSHMEM_CACHE_WB;
	} else if (!strcmp(cache, "wc")) {
		*out = IVSHMEM_CACHE_WC;
	} else if (!strcmp(cache, "uc")) {
		*out = IVSHMEM_CACHE_UC;
	} else {
		dev_err(&pdev->dev, "cache=%s: use wb, wc or uc\n", cache);
		return -EINVAL;
	}
	return 0;
}

/*
 * Map BAR2 into the kernel with the requested memory type. Besides giving
 * us a kernel view, this reserves the range's memtype with PAT, and the
 * pfns that mmap() inserts later inherit exactly that type: this is what
 * makes user mappings write-back instead of uncached-minus.
 */
static void __iomem *ivshmem_map_shm(struct ivshmem_dev *idev)
{
	switch (idev->cache_req) {
	case IVSHMEM_CACHE_WC:
		return ioremap_wc(idev->shm_phys, idev->shm_size);
	case IVSHMEM_CACHE_UC:
		return ioremap_uc(idev->shm_phys, idev->shm_size);
	default:
		return ioremap_cache(idev->shm_phys, idev->shm_size);
	}
}

/*
 * The memory type the kernel really gave our mapping of BAR2 (and so every
 * user mapping, which inherits the PAT reservation), read back from the
 * page table entry that maps its first page.
 */
static u32 ivshmem_effective_cache(struct ivshmem_dev *idev)
{
#ifdef CONFIG_X86
	/* Aliases (same PTE bits) resolve to the first, most basic, name. */
	static const struct {
		enum page_cache_mode pcm;
		u32 cache;
	} modes[] = {
		{ _PAGE_CACHE_MODE_WB, IVSHMEM_CACHE_WB },
		{ _PAGE_CACHE_MODE_UC_MINUS, IVSHMEM_CACHE_UC_MINUS },
		{ _PAGE_CACHE_MODE_UC, IVSHMEM_CACHE_UC },
		{ _PAGE_CACHE_MODE_WC, IVSHMEM_CACHE_WC },
		{ _PAGE_CACHE_MODE_WT, IVSHMEM_CACHE_WT },
		{ _PAGE_CACHE_MODE_WP, IVSHMEM_CACHE_WP },
	};
	unsigned int level, i;
	unsigned long bits;
	pgprot_t prot;
	pte_t *pte;

	pte = lookup_address((unsigned long)idev->shm_kva, &level);
	if (!pte || !pte_present(*pte))
		return IVSHMEM_CACHE_UNKNOWN;
	prot = pte_pgprot(*pte);
	if (level != PG_LEVEL_4K)
		prot = pgprot_large_2_4k(prot);
	bits = pgprot_val(prot) & _PAGE_CACHE_MASK;
	for (i = 0; i < ARRAY_SIZE(modes); i++)
		if (cachemode2protval(modes[i].pcm) == bits)
			return modes[i].cache;
	return IVSHMEM_CACHE_UNKNOWN;
#else
	return idev->cache_req;
#endif
}

static void ivshmem_free_vectors(struct ivshmem_dev *idev)
{
	u32 i;

	for (i = 0; i < idev->nvec; i++)
		if (idev->vecs[i].requested)
			free_irq(idev->vecs[i].irq, &idev->vecs[i]);
	if (idev->nvec)
		pci_free_irq_vectors(idev->pdev);
}

/* One MSI-X vector per doorbell vector; a plain device has none. */
static int ivshmem_setup_vectors(struct ivshmem_dev *idev)
{
	struct pci_dev *pdev = idev->pdev;
	int want = pci_msix_vec_count(pdev);
	int got, ret;
	u32 i;

	if (want <= 0)
		return 0;
	pci_set_master(pdev); /* MSI-X messages are bus-master writes */
	got = pci_alloc_irq_vectors(pdev, 1, want, PCI_IRQ_MSIX);
	if (got < 0) {
		dev_warn(&pdev->dev, "no MSI-X vectors (%d): events disabled\n", got);
		return 0;
	}
	if (got < want)
		dev_warn(&pdev->dev, "only %d of %d MSI-X vectors\n", got, want);
	idev->vecs = kcalloc(got, sizeof(*idev->vecs), GFP_KERNEL);
	if (!idev->vecs) {
		pci_free_irq_vectors(pdev);
		return -ENOMEM;
	}
	idev->nvec = got;
	for (i = 0; i < idev->nvec; i++) {
		struct ivshmem_vector *vec = &idev->vecs[i];

		vec->idev = idev;
		atomic64_set(&vec->count, 0);
		vec->irq = pci_irq_vector(pdev, i);
		snprintf(vec->name, sizeof(vec->name), "%s-v%u",
			 dev_name(&idev->dev), i);
		ret = request_irq(vec->irq, ivshmem_irq, 0, vec->name, vec);
		if (ret) {
			ivshmem_free_vectors(idev);
			idev->nvec = 0;
			return ret;
		}
		vec->requested = true;
	}
	return 0;
}

static int ivshmem_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct ivshmem_dev *idev;
	int minor, ret;

	idev = kzalloc(sizeof(*idev), GFP_KERNEL);
	if (!idev)
		return -ENOMEM;
	minor = ida_alloc_max(&ivshmem_ida, IVSHMEM_MAX_DEVS - 1, GFP_KERNEL);
	if (minor < 0) {
		kfree(idev);
		return minor;
	}
	idev->pdev = pdev;
	init_rwsem(&idev->lock);
	init_waitqueue_head(&idev->wq);
	mutex_init(&idev->files_lock);
	INIT_LIST_HEAD(&idev->files);
	mutex_init(&idev->pr_lock);
	spin_lock_init(&idev->pr_gen_lock);
	idev->pr_vec = -1;
	atomic64_set(&idev->pr_changes, 0);
	device_initialize(&idev->dev);
	idev->dev.class = &ivshmem_class;
	idev->dev.parent = &pdev->dev;
	idev->dev.devt = MKDEV(MAJOR(ivshmem_devt), minor);
	idev->dev.release = ivshmem_dev_release;
	dev_set_drvdata(&idev->dev, idev);
	/* From here on put_device() frees idev and the minor. */
	ret = dev_set_name(&idev->dev, "ivshmem%d", minor);
	if (ret)
		goto err_put;

	ret = ivshmem_parse_cache(pdev, &idev->cache_req);
	if (ret)
		goto err_put;
	ret = pci_enable_device(pdev);
	if (ret)
		goto err_put;
	ret = pci_request_regions(pdev, "ivshmem");
	if (ret)
		goto err_disable;

	ret = -ENODEV;
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < IVSHMEM_BAR0_MIN ||
	    !(pci_resource_flags(pdev, 2) & IORESOURCE_MEM) ||
	    !pci_resource_len(pdev, 2) ||
	    !PAGE_ALIGNED(pci_resource_start(pdev, 2)) ||
	    !PAGE_ALIGNED(pci_resource_len(pdev, 2))) {
		dev_err(&pdev->dev, "unexpected BAR layout (BAR0 registers, BAR2 page-aligned memory)\n");
		goto err_release;
	}
	idev->shm_phys = pci_resource_start(pdev, 2);
	idev->shm_size = pci_resource_len(pdev, 2);

	idev->pr = ivshmem_pr_detect(pdev);

	ret = -ENOMEM;
	idev->regs = pci_iomap(pdev, 0, idev->pr ? IVSHMEM_BAR0_PR : IVSHMEM_BAR0_MIN);
	if (!idev->regs)
		goto err_release;
	if (idev->pr)
		idev->pr = ivshmem_pr_check_regs(idev);
	idev->shm_kva = ivshmem_map_shm(idev);
	if (!idev->shm_kva) {
		dev_err(&pdev->dev, "cannot map BAR2 %s\n", cache_name(idev->cache_req));
		goto err_unmap_regs;
	}
	idev->cache = ivshmem_effective_cache(idev);
	if (idev->cache != idev->cache_req)
		dev_warn(&pdev->dev,
			 "BAR2 is %s, not %s as asked: the firmware's MTRRs (or PAT) decide this range; a VMM should place BAR2 in write-back MTRR space (e.g. above 4 GiB)\n",
			 cache_name(idev->cache), cache_name(idev->cache_req));

	ret = ivshmem_setup_vectors(idev);
	if (ret)
		goto err_unmap_shm;

	cdev_init(&idev->cdev, &ivshmem_fops);
	idev->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&idev->cdev, &idev->dev);
	if (ret)
		goto err_vectors;
	pci_set_drvdata(pdev, idev);

	dev_info(&pdev->dev, "%s: %llu KiB at %pa (%s), position %d, %u vectors%s\n",
		 dev_name(&idev->dev), idev->shm_size >> 10, &idev->shm_phys,
		 cache_name(idev->cache), ivshmem_position(idev), idev->nvec,
		 idev->pr ? ", peer presence" : "");
	return 0;

err_vectors:
	ivshmem_free_vectors(idev);
err_unmap_shm:
	iounmap(idev->shm_kva);
err_unmap_regs:
	pci_iounmap(pdev, idev->regs);
err_release:
	pci_release_regions(pdev);
err_disable:
	pci_disable_device(pdev);
err_put:
	put_device(&idev->dev);
	return ret;
}

/*
 * Unbind (rmmod, sysfs unbind, hot-unplug). Open files may remain: they
 * see ENODEV, their mappings are zapped (a later access gets SIGBUS), and
 * the structure lives until the last one is closed.
 */
static void ivshmem_remove(struct pci_dev *pdev)
{
	struct ivshmem_dev *idev = pci_get_drvdata(pdev);

	cdev_device_del(&idev->cdev, &idev->dev);

	down_write(&idev->lock);
	idev->dead = true;
	up_write(&idev->lock);
	wake_up_interruptible_all(&idev->wq);
	/* No fault can map BAR2 anymore; take down what is mapped. */
	ivshmem_zap_mappings(idev);

	/* No notification once our handlers are gone (files may outlive us). */
	if (idev->pr)
		iowrite32(0, idev->regs + IVSHMEM_REG_PR_NOTIFY);
	ivshmem_free_vectors(idev);
	iounmap(idev->shm_kva);
	pci_iounmap(pdev, idev->regs);
	pci_clear_master(pdev);
	pci_release_regions(pdev);
	pci_disable_device(pdev);
	pci_set_drvdata(pdev, NULL);
	dev_info(&pdev->dev, "%s: removed\n", dev_name(&idev->dev));
	put_device(&idev->dev);
}

static const struct pci_device_id ivshmem_ids[] = {
	{ PCI_DEVICE(0x1af4, 0x1110) },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, ivshmem_ids);

static struct pci_driver ivshmem_driver = {
	.name = "ivshmem",
	.id_table = ivshmem_ids,
	.probe = ivshmem_probe,
	.remove = ivshmem_remove,
};

static int __init ivshmem_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&ivshmem_devt, 0, IVSHMEM_MAX_DEVS, "ivshmem");
	if (ret)
		return ret;
	ret = class_register(&ivshmem_class);
	if (ret)
		goto err_chrdev;
	ret = pci_register_driver(&ivshmem_driver);
	if (ret)
		goto err_class;
	return 0;

err_class:
	class_unregister(&ivshmem_class);
err_chrdev:
	unregister_chrdev_region(ivshmem_devt, IVSHMEM_MAX_DEVS);
	return ret;
}

static void __exit ivshmem_exit(void)
{
	pci_unregister_driver(&ivshmem_driver);
	class_unregister(&ivshmem_class);
	unregister_chrdev_region(ivshmem_devt, IVSHMEM_MAX_DEVS);
}

module_init(ivshmem_init);
module_exit(ivshmem_exit);

MODULE_DESCRIPTION("ivshmem (1af4:1110) shared memory, doorbells and MSI-X events");
MODULE_LICENSE("GPL");
