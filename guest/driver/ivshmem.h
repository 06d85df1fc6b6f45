/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ivshmem: userspace ABI of the ivvmm guest driver for the ivshmem PCI
 * device (1af4:1110). See README.md next to this file for the semantics.
 *
 * Character device: /dev/ivshmemN, one per ivshmem PCI function.
 *   mmap    BAR2 (the shared memory), MAP_SHARED only; offset and length
 *           must lie within BAR2. Memory type: module parameter `cache`
 *           (default write-back).
 *   read    one __u64 event count per MSI-X vector (blocks until a count
 *           changed since this file's last read; O_NONBLOCK: EAGAIN); a
 *           file subscribed with IVSHMEM_IOC_NOTIFY gets one more, the
 *           peer-change count, after them.
 *   poll    EPOLLIN when a count changed since this file's last read;
 *           EPOLLHUP|EPOLLERR once the device is gone.
 *   ioctl   IVSHMEM_IOC_INFO, IVSHMEM_IOC_RING, IVSHMEM_IOC_WAIT,
 *           IVSHMEM_IOC_NOTIFY below.
 */
#ifndef _UAPI_IVSHMEM_H
#define _UAPI_IVSHMEM_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IVSHMEM_IOC_MAGIC 0xE7

/*
 * Memory type of mmap()ed BAR2 (ivshmem_info.cache): the type the kernel
 * really gave the mapping, which can differ from the one the `cache`
 * module parameter asked for (e.g. firmware MTRRs that make BAR2's range
 * uncached turn a write-back request into uncached-minus).
 */
#define IVSHMEM_CACHE_WB 0	 /* write-back: the default, fastest */
#define IVSHMEM_CACHE_WC 1	 /* write-combining */
#define IVSHMEM_CACHE_UC 2	 /* uncached */
#define IVSHMEM_CACHE_UC_MINUS 3 /* uncached unless an MTRR says WC */
#define IVSHMEM_CACHE_WT 4	 /* write-through */
#define IVSHMEM_CACHE_WP 5	 /* write-protected */
#define IVSHMEM_CACHE_UNKNOWN 255

struct ivshmem_info {
	__u64 size;     /* BAR2 size in bytes */
	__s32 position; /* IVPosition: this VM's peer ID (0 without doorbell) */
	__u32 vectors;  /* MSI-X vectors with an interrupt handler (0: plain) */
	__u32 cache;    /* IVSHMEM_CACHE_* of mmap()ed BAR2 */
	__u32 reserved; /* 0 */
};

/* Interrupt vector `vector` of peer `peer` (writes the Doorbell register). */
struct ivshmem_ring {
	__u16 peer;
	__u16 vector;
	__u32 reserved; /* must be 0 */
};

/*
 * Wait for an event on one of our vectors.
 * In:  vector; count = the last count the caller saw; timeout_ms (< 0:
 *      no timeout, 0: do not block).
 * Out: count = the vector's current count (also on ETIMEDOUT); the number
 *      of events since the last call is (new count - old count), so no
 *      event is ever lost between waits.
 * Returns 0 when the count differs from the one passed in; -1 with errno
 * ETIMEDOUT on timeout, EINTR on a signal, ENODEV when the device is gone.
 * Tip: pass timeout_ms = 0 once to learn the current count.
 */
struct ivshmem_wait {
	__u32 vector;
	__s32 timeout_ms;
	__u64 count;
};

/*
 * ivshmem_wait.vector for the peer-change count of a file subscribed with
 * IVSHMEM_IOC_NOTIFY (EINVAL on a file that is not).
 */
#define IVSHMEM_EVENT_PEERS 0xffffffffu

/*
 * Subscribe this open file to peer/link change events (ivvmm's peer
 * presence extension, docs/ivshmem-presence.md; EOPNOTSUPP without it,
 * e.g. on QEMU). The first subscriber turns on PR_NOTIFY on one MSI-X
 * vector, the last close turns it off; until then no device interrupts
 * for changes. A notification is an interrupt on that vector: its event
 * count grows too, like a doorbell on it (with one vector, a doorbell
 * user on vector 0 sees it as an extra event).
 * In:  vector = IVSHMEM_NOTIFY_ANY (the vector already notifying, else the
 *      last one) or a vector number (EBUSY if another is already in use,
 *      EINVAL if >= vectors, ENXIO with no vectors); flags = 0.
 * Out: vector = the one used; count = the peer-change count now, which
 *      grows (never goes back) on each change seen by the handler.
 * Idempotent per file; the subscription ends when the file is closed.
 */
#define IVSHMEM_NOTIFY_ANY (-1)
struct ivshmem_notify {
	__s32 vector;
	__u32 flags; /* must be 0 */
	__u64 count;
};

#define IVSHMEM_IOC_INFO _IOR(IVSHMEM_IOC_MAGIC, 0x00, struct ivshmem_info)
#define IVSHMEM_IOC_RING _IOW(IVSHMEM_IOC_MAGIC, 0x01, struct ivshmem_ring)
#define IVSHMEM_IOC_WAIT _IOWR(IVSHMEM_IOC_MAGIC, 0x02, struct ivshmem_wait)
#define IVSHMEM_IOC_NOTIFY _IOWR(IVSHMEM_IOC_MAGIC, 0x03, struct ivshmem_notify)

#endif /* _UAPI_IVSHMEM_H */
