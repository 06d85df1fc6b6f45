/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* PCI bus 0 through configuration mechanism #1 (ports 0xcf8/0xcfc). */
#ifndef TESTGUEST_PCI_H
#define TESTGUEST_PCI_H

#include "common.h"

#define PCI_VENDOR	0x00
#define PCI_DEVICE	0x02
#define PCI_COMMAND	0x04
#define PCI_STATUS	0x06
#define PCI_REVISION	0x08
#define PCI_CLASS	0x09	/* prog-if, subclass, class: 3 bytes */
#define PCI_HEADER	0x0e
#define PCI_BAR0	0x10
#define PCI_SUBSYS_VENDOR 0x2c
#define PCI_SUBSYS	0x2e
#define PCI_CAP_PTR	0x34
#define PCI_INT_PIN	0x3d

#define PCI_CMD_IO	0x1
#define PCI_CMD_MEM	0x2
#define PCI_CMD_MASTER	0x4
#define PCI_STATUS_CAPS	0x10

#define PCI_CAP_MSIX	0x11

struct pci_fn {
	u8 dev, fn;
};

u32 pci_read32(struct pci_fn f, u8 off);
u16 pci_read16(struct pci_fn f, u8 off);
u8 pci_read8(struct pci_fn f, u8 off);
void pci_write32(struct pci_fn f, u8 off, u32 v);
void pci_write16(struct pci_fn f, u8 off, u16 v);
void pci_write8(struct pci_fn f, u8 off, u8 v);

/* Scans all 32 slots of bus 0 (multi-function aware); returns the count. */
int pci_scan(struct pci_fn *out, int max);

struct pci_bar {
	bool present;
	bool io;
	bool is64;
	bool pref;
	u64 addr;
	u64 size;
};
/*
 * Reads BAR `bar` with the sizing probe (all-ones, read back), decode off
 * while probing; the BAR and the command register are restored.
 */
void pci_bar_probe(struct pci_fn f, int bar, struct pci_bar *out);
/* Writes a new address into a memory BAR (decode off while writing). */
void pci_bar_set(struct pci_fn f, int bar, bool is64, u64 addr);
/* Offset of the first capability with this id, or 0. */
u8 pci_find_cap(struct pci_fn f, u8 id);

#endif
