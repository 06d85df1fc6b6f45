// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ivshmem plain-mode memory cases: data (host <-> guest patterns at every
// access width), move (BAR2 and BAR0 reprogrammed), decode (command register
// memory enable).
#include "acpi.h"
#include "ivshmem.h"
#include "mm.h"
#include "tests.h"

static u64 host_value(u64 off) { return HOST_PATTERN ^ off; }

/* Reads the u64 at a with loads of `width` bytes, little-endian. */
static u64 read_as(u64 a, int width)
{
	u64 v = 0;
	for (int i = 0; i < 8; i += width) {
		u64 part;
		switch (width) {
		case 1: part = mmio_read8(a + i); break;
		case 2: part = mmio_read16(a + i); break;
		case 4: part = mmio_read32(a + i); break;
		default: part = mmio_read64(a + i); break;
		}
		v |= part << (8 * i);
	}
	return v;
}

static void write_as(u64 a, u64 v, int width)
{
	for (int i = 0; i < 8; i += width) {
		u64 part = v >> (8 * i);
		switch (width) {
		case 1: mmio_write8(a + i, (u8)part); break;
		case 2: mmio_write16(a + i, (u16)part); break;
		case 4: mmio_write32(a + i, (u32)part); break;
		default: mmio_write64(a + i, part); break;
		}
	}
}

static const int widths[] = { 1, 2, 4, 8 };

static bool host_patterns_at(u64 base, u64 size, const char *what)
{
	u64 offs[3] = { 0, 4096, size - 8 };
	bool ok = true;
	for (int i = 0; i < 3; i++) {
		for (u32 w = 0; w < ARRAY_SIZE(widths); w++) {
			u64 got = read_as(base + offs[i], widths[w]);
			if (got != host_value(offs[i])) {
				kprintf("check %s off=0x%lx width=%d bad got=0x%lx want=0x%lx\n", what,
					offs[i], widths[w] * 8, got, host_value(offs[i]));
				ok = false;
			}
		}
	}
	if (ok)
		kprintf("check %s ok offsets=0,0x1000,0x%lx widths=8,16,32,64\n", what, size - 8);
	return ok;
}

void test_ivshmem_data(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	int n = ivshmem_find(devs, IVSHMEM_MAX, true);
	bool all = true;
	for (int i = 0; i < n; i++) {
		u64 base = devs[i].bar[2].addr, size = devs[i].bar[2].size;
		if (size < 8192)
			fail("dev %d: BAR2 of 0x%lx bytes is too small for the data test", i, size);
		bool ok = host_patterns_at(base, size, "host_to_guest");
		u64 offs[3] = { 64, 4096 + 64, size - 64 };
		for (int j = 0; j < 3; j++) {
			u64 v = GUEST_PATTERN ^ offs[j];
			for (u32 w = 0; w < ARRAY_SIZE(widths); w++)
				write_as(base + offs[j] + 8 * w, v, widths[w]);
			for (u32 w = 0; w < ARRAY_SIZE(widths); w++) {
				u64 got = mmio_read64(base + offs[j] + 8 * w);
				if (got != v) {
					kprintf("check guest_to_host off=0x%lx width=%d bad got=0x%lx want=0x%lx\n",
						offs[j] + 8 * w, widths[w] * 8, got, v);
					ok = false;
				}
			}
		}
		kprintf("data dev=%d size=0x%lx %s\n", i, size, ok ? "ok" : "bad");
		all &= ok;
	}
	if (!all)
		fail("shared memory contents wrong");
}

static u64 align_up(u64 v, u64 a) { return (v + a - 1) & ~(a - 1); }

/*
 * What a read of guest-physical space that no device decodes returns.
 * Real PCI (master abort) and the brief say all-ones (unmapped=ones, the
 * default); QEMU 7.2 returns 0 (unmapped=zero).
 */
static u64 unmapped_value(u64 mask)
{
	const char *v = param("unmapped");
	if (!v || str_eq_n(v, "ones", 4))
		return mask;
	if (str_eq_n(v, "zero", 4))
		return 0;
	fail("unmapped= must be ones or zero");
}

/* The fixed LAPIC/IOAPIC range at the top of the 32-bit space. */
static bool hits_fixed_devices(u64 addr, u64 size)
{
	return addr < 0x100000000ull && addr + size > 0xfec00000ull;
}

void test_ivshmem_move(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	struct pci_bar *b2 = &d->bar[2], *b0 = &d->bar[0];
	bool ok = true;

	/*
	 * window=acpi-low|acpi-high: the default targets are the lowest or
	 * highest free aligned ranges of the PCI host bridge windows the DSDT
	 * gives (BAR2 in the 64-bit one, BAR0 in the 32-bit one), as an OS
	 * that assigns BARs itself would pick them.
	 */
	struct acpi_info acpi;
	bool from_acpi = param_is("window", "acpi-low") || param_is("window", "acpi-high");
	bool high = param_is("window", "acpi-high");
	if (param("window") && !from_acpi)
		fail("window= must be acpi-low or acpi-high");
	if (from_acpi && !acpi_read(&acpi))
		fail("window=: no ACPI RSDP found");
	if (from_acpi)
		kprintf("move window=%s mmio32=0x%lx-0x%lx mmio64=0x%lx-0x%lx\n",
			high ? "acpi-high" : "acpi-low", acpi.m32_min, acpi.m32_max, acpi.m64_min,
			acpi.m64_max);

	u64 old2 = b2->addr, size2 = b2->size;
	u64 new2 = param_u64("bar2_to", from_acpi ? acpi_free_bar_range(&acpi, b2->is64, size2, high)
						 : align_up(old2 + 2 * size2, size2));
	if (new2 & (size2 - 1))
		fail("bar2_to=0x%lx is not aligned to the BAR size 0x%lx", new2, size2);
	if (!b2->is64 && new2 + size2 > 0x100000000ull)
		fail("bar2_to=0x%lx does not fit a 32-bit BAR", new2);
	if (hits_fixed_devices(new2, size2))
		fail("new BAR2 0x%lx+0x%lx overlaps the IOAPIC/LAPIC range: pass bar2_to=", new2,
		     size2);
	kprintf("move bar2 from=0x%lx to=0x%lx size=0x%lx\n", old2, new2, size2);
	pci_bar_set(d->f, 2, b2->is64, new2);
	map_range(new2, size2);
	struct pci_bar now;
	pci_bar_probe(d->f, 2, &now);
	ok &= check("bar2_readback", now.addr, new2);
	ok &= check("bar2_size_kept", now.size, size2);
	ok &= host_patterns_at(phys_to_virt(new2), size2, "bar2_new_pattern");
	ok &= check("bar2_old_unmapped", mmio_read64(old2), unmapped_value(~0ull));

	u64 old0 = b0->addr, size0 = b0->size;
	u64 new0 = param_u64("bar0_to", from_acpi ? acpi_free_bar_range(&acpi, false, size0, high)
						 : align_up(old0 + 2 * size0, size0));
	if (new0 & (size0 - 1))
		fail("bar0_to=0x%lx is not aligned to the BAR size 0x%lx", new0, size0);
	if (hits_fixed_devices(new0, size0))
		fail("new BAR0 0x%lx overlaps the IOAPIC/LAPIC range: pass bar0_to=", new0);
	kprintf("move bar0 from=0x%lx to=0x%lx size=0x%lx\n", old0, new0, size0);
	mmio_write32(old0 + REG_INTRMASK, 0x0badf00d);
	pci_bar_set(d->f, 0, b0->is64, new0);
	map_range(new0, size0);
	pci_bar_probe(d->f, 0, &now);
	ok &= check("bar0_readback", now.addr, new0);
	ok &= check("bar0_intrmask_kept", mmio_read32(new0 + REG_INTRMASK), 0x0badf00d);
	mmio_write32(new0 + REG_INTRMASK, 0x13572468);
	ok &= check("bar0_intrmask_rw", mmio_read32(new0 + REG_INTRMASK), 0x13572468);
	ok &= check("bar0_old_unmapped", mmio_read32(old0 + REG_INTRMASK), unmapped_value(0xffffffff));
	mmio_write32(new0 + REG_INTRMASK, 0);
	if (!ok)
		fail("BAR move went wrong");
}

void test_ivshmem_decode(void)
{
	struct ivshmem_dev devs[IVSHMEM_MAX];
	ivshmem_find(devs, IVSHMEM_MAX, true);
	struct ivshmem_dev *d = &devs[0];
	u64 r = d->bar[0].addr, m = d->bar[2].addr;
	bool ok = true;

	ok &= check("decode_on_pattern", mmio_read64(m), host_value(0));
	mmio_write32(r + REG_INTRMASK, 0x11);
	u16 cmd = pci_read16(d->f, PCI_COMMAND);
	pci_write16(d->f, PCI_COMMAND, cmd & ~PCI_CMD_MEM);
	kprintf("decode off cmd=%04x\n", pci_read16(d->f, PCI_COMMAND));
	ok &= check("decode_off_bar0", mmio_read32(r + REG_INTRMASK), unmapped_value(0xffffffff));
	ok &= check("decode_off_bar2", mmio_read64(m), unmapped_value(~0ull));
	mmio_write64(m, 0xdeaddeaddeaddeadull);
	mmio_write32(r + REG_INTRMASK, 0x77);
	pci_write16(d->f, PCI_COMMAND, cmd | PCI_CMD_MEM);
	kprintf("decode on cmd=%04x\n", pci_read16(d->f, PCI_COMMAND));
	ok &= check("decode_on_bar2_write_dropped", mmio_read64(m), host_value(0));
	ok &= check("decode_on_bar0_write_dropped", mmio_read32(r + REG_INTRMASK), 0x11);
	mmio_write32(r + REG_INTRMASK, 0);
	if (!ok)
		fail("memory decode bit not honoured");
}
