// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// MSI-X setup for the doorbell cases.
#include "msix.h"
#include "apic.h"
#include "cpu.h"

void msix_mask_entry(struct msix *m, u32 v, bool masked)
{
	mmio_write32(m->table + 16 * v + 12, masked ? 1 : 0);
}

void msix_set_ctrl(struct msix *m, u16 set, u16 clear)
{
	struct pci_fn f = m->dev->f;
	u16 c = pci_read16(f, m->cap + 2);
	pci_write16(f, m->cap + 2, (c | set) & ~clear);
}

bool msix_pending(struct msix *m, u32 v)
{
	return (mmio_read32(m->pba + 4 * (v / 32)) >> (v % 32)) & 1;
}

void msix_setup(struct msix *m, struct ivshmem_dev *d, u32 mask_entries, bool function_mask,
		bool leave_disabled)
{
	struct pci_fn f = d->f;
	m->dev = d;
	m->cap = d->msix_cap;
	if (!m->cap)
		fail("00:%02x.%x has no MSI-X capability (not in doorbell mode?)", f.dev, f.fn);
	u16 ctrl = pci_read16(f, m->cap + 2);
	u32 tab = pci_read32(f, m->cap + 4), pba = pci_read32(f, m->cap + 8);
	const struct pci_bar *tb = &d->bar[tab & 7], *pb = &d->bar[pba & 7];
	if ((tab & 7) > 2 || (pba & 7) > 2 || !tb->present || !pb->present || !tb->addr)
		fail("MSI-X table/PBA BAR (%u/%u) not usable", tab & 7, pba & 7);
	m->nvec = (ctrl & 0x7ff) + 1;
	m->table = tb->addr + (tab & ~7u);
	m->pba = pb->addr + (pba & ~7u);

	lapic_enable();
	u32 apic = lapic_id();
	/* Function-mask while programming so no half-written entry fires. */
	msix_set_ctrl(m, MSIX_CTRL_FMASK | MSIX_CTRL_ENABLE, 0);
	for (u32 v = 0; v < m->nvec && v < VEC_MSIX_COUNT; v++) {
		u64 e = m->table + 16 * v;
		mmio_write32(e + 12, 1);
		mmio_write32(e + 0, LAPIC_BASE | (apic << 12));
		mmio_write32(e + 4, 0);
		mmio_write32(e + 8, VEC_MSIX_BASE + v);
		mmio_write32(e + 12, (mask_entries >> v) & 1);
	}
	if (leave_disabled)
		msix_set_ctrl(m, 0, MSIX_CTRL_ENABLE | MSIX_CTRL_FMASK);
	else if (!function_mask)
		msix_set_ctrl(m, 0, MSIX_CTRL_FMASK);
	kprintf("msix bdf=00:%02x.%x vectors=%u table=0x%lx pba=0x%lx ctrl=%04x apic=%u\n", f.dev,
		f.fn, m->nvec, m->table, m->pba, pci_read16(f, m->cap + 2), apic);
}
