// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Configuration mechanism #1: CONFIG_ADDRESS at 0xcf8, data at 0xcfc..0xcff.
#include "pci.h"

static void select_reg(struct pci_fn f, u8 off)
{
	outl(0xcf8, 0x80000000u | ((u32)f.dev << 11) | ((u32)f.fn << 8) | (off & 0xfc));
}

u32 pci_read32(struct pci_fn f, u8 off)
{
	select_reg(f, off);
	return inl(0xcfc);
}

u16 pci_read16(struct pci_fn f, u8 off)
{
	select_reg(f, off);
	return inw(0xcfc + (off & 2));
}

u8 pci_read8(struct pci_fn f, u8 off)
{
	select_reg(f, off);
	return inb(0xcfc + (off & 3));
}

void pci_write32(struct pci_fn f, u8 off, u32 v)
{
	select_reg(f, off);
	outl(0xcfc, v);
}

void pci_write16(struct pci_fn f, u8 off, u16 v)
{
	select_reg(f, off);
	outw(0xcfc + (off & 2), v);
}

void pci_write8(struct pci_fn f, u8 off, u8 v)
{
	select_reg(f, off);
	outb(0xcfc + (off & 3), v);
}

int pci_scan(struct pci_fn *out, int max)
{
	int n = 0;
	for (u8 dev = 0; dev < 32; dev++) {
		struct pci_fn f = { dev, 0 };
		if (pci_read16(f, PCI_VENDOR) == 0xffff)
			continue;
		u8 nfn = (pci_read8(f, PCI_HEADER) & 0x80) ? 8 : 1;
		for (u8 fn = 0; fn < nfn; fn++) {
			f.fn = fn;
			if (fn && pci_read16(f, PCI_VENDOR) == 0xffff)
				continue;
			if (n < max)
				out[n] = f;
			n++;
		}
	}
	return n;
}

void pci_bar_probe(struct pci_fn f, int bar, struct pci_bar *out)
{
	u8 off = PCI_BAR0 + 4 * bar;
	u16 cmd = pci_read16(f, PCI_COMMAND);
	pci_write16(f, PCI_COMMAND, cmd & ~(PCI_CMD_IO | PCI_CMD_MEM));

	u32 lo = pci_read32(f, off);
	pci_write32(f, off, 0xffffffffu);
	u32 lo_mask = pci_read32(f, off);
	pci_write32(f, off, lo);

	memset(out, 0, sizeof(*out));
	out->io = lo & 1;
	if (out->io) {
		u32 m = lo_mask & ~3u;
		out->present = m != 0;
		out->addr = lo & ~3u;
		if (!(m & 0xffff0000u))
			m |= 0xffff0000u;	/* 16-bit I/O decode */
		out->size = out->present ? (u32)(~m + 1) : 0;
	} else {
		out->is64 = ((lo >> 1) & 3) == 2;
		out->pref = lo & 8;
		u64 mask = lo_mask & ~0xfu;
		u64 addr = lo & ~0xfu;
		if (out->is64) {
			u32 hi = pci_read32(f, off + 4);
			pci_write32(f, off + 4, 0xffffffffu);
			u32 hi_mask = pci_read32(f, off + 4);
			pci_write32(f, off + 4, hi);
			mask |= (u64)hi_mask << 32;
			addr |= (u64)hi << 32;
		} else {
			mask |= 0xffffffff00000000ull;
		}
		out->present = (mask & 0xffffffffull) != 0 || (out->is64 && (mask >> 32));
		out->addr = addr;
		out->size = out->present ? ~mask + 1 : 0;
	}
	pci_write16(f, PCI_COMMAND, cmd);
}

void pci_bar_set(struct pci_fn f, int bar, bool is64, u64 addr)
{
	u8 off = PCI_BAR0 + 4 * bar;
	u16 cmd = pci_read16(f, PCI_COMMAND);
	pci_write16(f, PCI_COMMAND, cmd & ~(PCI_CMD_IO | PCI_CMD_MEM));
	u32 flags = pci_read32(f, off) & 0xf;
	pci_write32(f, off, (u32)addr | flags);
	if (is64)
		pci_write32(f, off + 4, (u32)(addr >> 32));
	pci_write16(f, PCI_COMMAND, cmd);
}

u8 pci_find_cap(struct pci_fn f, u8 id)
{
	if (!(pci_read16(f, PCI_STATUS) & PCI_STATUS_CAPS))
		return 0;
	u8 p = pci_read8(f, PCI_CAP_PTR) & 0xfc;
	for (int guard = 0; p && guard < 48; guard++) {
		if (pci_read8(f, p) == id)
			return p;
		p = pci_read8(f, p + 1) & 0xfc;
	}
	return 0;
}
