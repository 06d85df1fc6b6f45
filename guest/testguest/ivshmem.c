// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ivshmem discovery shared by every ivshmem case, and ivshmem-ids.
#include "ivshmem.h"
#include "mm.h"
#include "tests.h"

int ivshmem_find(struct ivshmem_dev *out, int max, bool enable)
{
	struct pci_fn fns[256];
	int n = pci_scan(fns, ARRAY_SIZE(fns)), found = 0;
	for (int i = 0; i < n && i < (int)ARRAY_SIZE(fns) && found < max; i++) {
		struct pci_fn f = fns[i];
		if (pci_read16(f, PCI_VENDOR) != IVSHMEM_VENDOR ||
		    pci_read16(f, PCI_DEVICE) != IVSHMEM_DEVICE)
			continue;
		struct ivshmem_dev *d = &out[found++];
		d->f = f;
		for (int b = 0; b < 3; b++)
			pci_bar_probe(f, b, &d->bar[b]);
		d->msix_cap = pci_find_cap(f, PCI_CAP_MSIX);
		if (!enable)
			continue;
		if (!d->bar[0].present || !d->bar[2].present || d->bar[0].io || d->bar[2].io)
			fail("ivshmem 00:%02x.%x: BAR0/BAR2 missing or not memory", f.dev, f.fn);
		if (!d->bar[0].addr || !d->bar[2].addr)
			fail("ivshmem 00:%02x.%x: BAR0/BAR2 not assigned", f.dev, f.fn);
		pci_write16(f, PCI_COMMAND,
			    pci_read16(f, PCI_COMMAND) | PCI_CMD_MEM | PCI_CMD_MASTER);
		map_range(d->bar[0].addr, d->bar[0].size);
		map_range(d->bar[2].addr, d->bar[2].size);
		if (d->bar[1].present)
			map_range(d->bar[1].addr, d->bar[1].size);
	}
	if (!found)
		fail("no ivshmem device (1af4:1110) on bus 0");
	return found;
}

bool check(const char *name, u64 got, u64 want)
{
	bool ok = got == want;
	kprintf("check %s %s got=0x%lx want=0x%lx\n", name, ok ? "ok" : "bad", got, want);
	return ok;
}

static void print_bar(int i, const struct pci_bar *b)
{
	if (!b->present) {
		kprintf(" bar%d=none", i);
		return;
	}
	if (b->io) {
		kprintf(" bar%d=io,size=0x%lx,addr=0x%lx", i, b->size, b->addr);
		return;
	}
	kprintf(" bar%d=%s%s,size=0x%lx,addr=0x%lx", i, b->is64 ? "mem64" : "mem32",
		b->pref ? ",pref" : "", b->size, b->addr);
}

static const char *cap_name(u8 id)
{
	switch (id) {
	case 0x01: return "pm";
	case 0x05: return "msi";
	case 0x09: return "vendor";
	case 0x10: return "pcie";
	case 0x11: return "msix";
	default: return NULL;
	}
}

static void print_caps(struct pci_fn f)
{
	kputs(" caps=");
	u8 p = (pci_read16(f, PCI_STATUS) & PCI_STATUS_CAPS) ? pci_read8(f, PCI_CAP_PTR) & 0xfc : 0;
	if (!p) {
		kputs("none");
		return;
	}
	u8 msix = 0;
	for (int n = 0; p && n < 48; n++) {
		u8 id = pci_read8(f, p);
		const char *name = cap_name(id);
		if (n)
			serial_putc(',');
		if (name)
			kprintf("%s@0x%x", name, p);
		else
			kprintf("cap%02x@0x%x", id, p);
		if (id == PCI_CAP_MSIX && !msix)
			msix = p;
		p = pci_read8(f, p + 1) & 0xfc;
	}
	if (msix) {
		u16 ctrl = pci_read16(f, msix + 2);
		u32 table = pci_read32(f, msix + 4), pba = pci_read32(f, msix + 8);
		kprintf(" msix_table_size=%u table=%u:0x%x pba=%u:0x%x msix_ctrl=%04x",
			(ctrl & 0x7ff) + 1, table & 7, table & ~7u, pba & 7, pba & ~7u, ctrl);
	}
}

void test_ivshmem_ids(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	int n = ivshmem_find(devs, IVSHMEM_MAX, false);
	for (int i = 0; i < n; i++) {
		struct pci_fn f = devs[i].f;
		u32 cr = pci_read32(f, 0x08);
		kprintf("ivshmem 00:%02x.%x vendor=%04x device=%04x rev=%02x class=%06x "
			"subsys_vendor=%04x subsys=%04x pin=%02x status=%04x cmd=%04x",
			f.dev, f.fn, pci_read16(f, PCI_VENDOR), pci_read16(f, PCI_DEVICE), cr & 0xff,
			cr >> 8, pci_read16(f, PCI_SUBSYS_VENDOR), pci_read16(f, PCI_SUBSYS),
			pci_read8(f, PCI_INT_PIN), pci_read16(f, PCI_STATUS),
			pci_read16(f, PCI_COMMAND));
		print_caps(f);
		for (int b = 0; b < 3; b++)
			print_bar(b, &devs[i].bar[b]);
		serial_putc('\n');
	}
	kprintf("ivshmem devices=%d\n", n);
}
