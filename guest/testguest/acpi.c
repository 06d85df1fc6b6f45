// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// ACPI: find the RSDP the standard ways, check every table's checksum, read
// the MADT (CPUs, IOAPIC, ISA overrides), the FADT (hardware-reduced flags,
// sleep and reset registers) and the DSDT (PNP0A03 and its _CRS windows,
// COM1, \_S5). The cases: acpi, acpi-poweroff, acpi-reset.
#include "acpi.h"
#include "apic.h"
#include "cpu.h"
#include "mm.h"
#include "mptable.h"
#include "pci.h"
#include "tests.h"

static u8 rd8(u64 a) { return *(volatile u8 *)a; }
static u32 rd32(u64 a) { return *(volatile u32 *)a; }
static u64 rd64(u64 a) { return *(volatile u64 *)a; }

static u8 sum(u64 addr, u32 len)
{
	u8 s = 0;
	for (u32 i = 0; i < len; i++)
		s += rd8(addr + i);
	return s;
}

/* "RSD PTR " with a valid 20-byte checksum, on a 16-byte boundary. */
static u64 scan(u64 start, u64 len)
{
	for (u64 a = start; a + 36 <= start + len; a += 16)
		if (rd64(a) == 0x2052545020445352ull && sum(a, 20) == 0)
			return a;
	return 0;
}

static bool sig_is(u64 addr, const char *sig)
{
	return !memcmp((const void *)addr, sig, 4);
}

/* Checks a table's signature, length and checksum; returns its length. */
static u32 check_table(u64 addr, const char *sig)
{
	if (!addr || addr + 36 > 0x100000000ull)
		fail("acpi: %s at 0x%lx is not in the low 4 GiB", sig, addr);
	if (!sig_is(addr, sig))
		fail("acpi: table at 0x%lx is not %s", addr, sig);
	u32 len = rd32(addr + 4);
	if (len < 36 || len > 0x100000)
		fail("acpi: %s length %u is not sane", sig, len);
	if (sum(addr, len))
		fail("acpi: %s checksum bad", sig);
	kprintf("acpi table=%s addr=0x%lx len=%u ok\n", sig, addr, len);
	return len;
}

static void read_madt(struct acpi_info *a)
{
	u64 m = a->madt;
	u32 len = rd32(m + 4);
	a->lapic_addr = rd32(m + 36);
	for (u64 p = m + 44; p + 2 <= m + len;) {
		u8 type = rd8(p), l = rd8(p + 1);
		if (l < 2 || p + l > m + len)
			fail("acpi: MADT entry at 0x%lx has length %u", p, l);
		switch (type) {
		case 0:	/* processor local APIC */
			if ((rd32(p + 4) & 1) && a->ncpus < MAX_CPUS)
				a->apic_ids[a->ncpus++] = rd8(p + 3);
			break;
		case 1:	/* IOAPIC */
			if (!a->nioapic) {
				a->ioapic_id = rd8(p + 2);
				a->ioapic_addr = rd32(p + 4);
			}
			a->nioapic++;
			break;
		case 2:	/* interrupt source override */
			if (rd8(p + 2) == 0 && rd8(p + 3) < 16)
				a->isa_gsi[rd8(p + 3)] = (int)rd32(p + 4);
			a->noverrides++;
			break;
		case 4:	/* local APIC NMI */
			if (rd8(p + 2) == 0xff)
				a->nmi_lint = rd8(p + 5);
			break;
		}
		p += l;
	}
}

static void read_gas(u64 at, struct acpi_gas *g)
{
	g->space = rd8(at);
	g->width = rd8(at + 1);
	g->addr = rd64(at + 4);
}

static void read_fadt(struct acpi_info *a)
{
	u64 f = a->fadt;
	u32 len = rd32(f + 4);
	if (len < 268)
		fail("acpi: FADT of %u bytes has no sleep registers (ACPI 5.0+ needs 268)", len);
	a->fadt_flags = rd32(f + 112);
	read_gas(f + 116, &a->reset);
	a->reset_value = rd8(f + 128);
	read_gas(f + 244, &a->sleep_control);
	read_gas(f + 256, &a->sleep_status);
	u64 x_dsdt = rd64(f + 140);
	a->dsdt = x_dsdt ? x_dsdt : rd32(f + 40);
}

/* AML integer constant at p: Zero, One, BytePrefix b; -1 otherwise. */
static int aml_small_int(u64 p)
{
	switch (rd8(p)) {
	case 0x00: return 0;
	case 0x01: return 1;
	case 0x0a: return rd8(p + 1);
	default: return -1;
	}
}

static bool match(u64 p, u64 end, const u8 *bytes, u32 n)
{
	if (p + n > end)
		return false;
	for (u32 i = 0; i < n; i++)
		if (rd8(p + i) != bytes[i])
			return false;
	return true;
}

/*
 * One pass over the DSDT's AML for the byte patterns we need; a table we
 * built ourselves has no other way to contain them (names are 4 bytes,
 * the descriptors' headers are checked against their own length fields).
 */
static void read_dsdt(struct acpi_info *a)
{
	static const u8 hid_pnp0a03[] = { '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x0a, 0x03 };
	static const u8 hid_pnp0501[] = { '_', 'H', 'I', 'D', 0x0c, 0x41, 0xd0, 0x05, 0x01 };
	static const u8 s5[] = { 0x08, '_', 'S', '5', '_', 0x12 };
	static const u8 dword_mem[] = { 0x87, 0x17, 0x00, 0x00 };
	static const u8 qword_mem[] = { 0x8a, 0x2b, 0x00, 0x00 };
	u64 start = a->dsdt + 36, end = a->dsdt + a->dsdt_len;
	a->s5_slp_typ = -1;
	for (u64 p = start; p < end; p++) {
		switch (rd8(p)) {
		case '_':
			a->pnp0a03 |= match(p, end, hid_pnp0a03, sizeof(hid_pnp0a03));
			a->pnp0501 |= match(p, end, hid_pnp0501, sizeof(hid_pnp0501));
			break;
		case 0x08:
			if (match(p, end, s5, sizeof(s5)) && a->s5_slp_typ < 0) {
				u64 q = p + sizeof(s5);
				q += 1 + (rd8(q) >> 6);	/* PkgLength */
				if (q + 2 < end && rd8(q) >= 1)	/* NumElements */
					a->s5_slp_typ = aml_small_int(q + 1);
			}
			break;
		case 0x87:
			if (!a->has_m32 && match(p, end, dword_mem, sizeof(dword_mem)) &&
			    p + 26 <= end) {
				u32 min = rd32(p + 10), max = rd32(p + 14), len = rd32(p + 22);
				if (max >= min && max - min + 1 == len) {
					a->has_m32 = true;
					a->m32_min = min;
					a->m32_max = max;
				}
			}
			break;
		case 0x8a:
			if (!a->has_m64 && match(p, end, qword_mem, sizeof(qword_mem)) &&
			    p + 46 <= end) {
				u64 min = rd64(p + 14), max = rd64(p + 22), len = rd64(p + 38);
				if (max >= min && max - min + 1 == len) {
					a->has_m64 = true;
					a->m64_min = min;
					a->m64_max = max;
				}
			}
			break;
		}
	}
}

bool acpi_read(struct acpi_info *a)
{
	memset(a, 0, sizeof(*a));
	for (int i = 0; i < 16; i++)
		a->isa_gsi[i] = -1;
	a->nmi_lint = -1;
	if (!param_is("rsdp", "scan") && boot.rsdp) {
		a->rsdp = boot.rsdp;
		a->via = boot.kind == BOOT_PVH ? "pvh" : "bootparams";
		if (rd64(a->rsdp) != 0x2052545020445352ull)
			fail("acpi: the boot protocol's RSDP 0x%lx has no \"RSD PTR \"", a->rsdp);
	} else {
		u64 ebda = (u64)mmio_read16(0x40e) << 4;	/* BDA: EBDA segment */
		a->via = "scan";
		if (ebda >= 0x80000 && ebda < 0xa0000)
			a->rsdp = scan(ebda, 1024);
		if (!a->rsdp)
			a->rsdp = scan(0xe0000, 0x20000);
	}
	if (!a->rsdp)
		return false;
	if (sum(a->rsdp, 20))
		fail("acpi: RSDP checksum bad");
	a->rsdp_rev = rd8(a->rsdp + 15);
	if (a->rsdp_rev < 2)
		fail("acpi: RSDP revision %u has no XSDT", a->rsdp_rev);
	if (rd32(a->rsdp + 20) != 36 || sum(a->rsdp, 36))
		fail("acpi: RSDP extended checksum or length bad");
	a->xsdt = rd64(a->rsdp + 24);
	u32 xlen = check_table(a->xsdt, "XSDT");
	a->ntables = (xlen - 36) / 8;
	for (u32 i = 0; i < a->ntables; i++) {
		u64 t = rd64(a->xsdt + 36 + 8 * i);
		if (t + 36 > 0x100000000ull)
			fail("acpi: XSDT entry %u at 0x%lx is out of reach", i, t);
		if (sig_is(t, "FACP")) {
			a->fadt = t;
			check_table(t, "FACP");
		} else if (sig_is(t, "APIC")) {
			a->madt = t;
			check_table(t, "APIC");
		} else {
			char s[5] = { 0 };
			memcpy(s, (const void *)t, 4);
			check_table(t, s);
		}
	}
	if (!a->fadt || !a->madt)
		fail("acpi: XSDT lacks the %s", a->fadt ? "MADT" : "FADT");
	read_madt(a);
	read_fadt(a);
	a->dsdt_len = check_table(a->dsdt, "DSDT");
	read_dsdt(a);
	return true;
}

static void print_gas(const char *name, const struct acpi_gas *g)
{
	kprintf(" %s=%s:0x%lx/%u", name, g->space == ACPI_GAS_IO ? "io" : "mem", g->addr, g->width);
}

void test_acpi(void)
{
	struct acpi_info a;
	if (!acpi_read(&a))
		fail("no ACPI RSDP found");
	kprintf("acpi rsdp=0x%lx via=%s rev=%u xsdt=0x%lx tables=%u\n", a.rsdp, a.via, a.rsdp_rev,
		a.xsdt, a.ntables);
	kprintf("acpi madt cpus=%u ioapics=%u ioapic_id=%u ioapic=0x%x lapic=0x%x overrides=%u "
		"nmi_lint=%d\n", a.ncpus, a.nioapic, a.ioapic_id, a.ioapic_addr, a.lapic_addr,
		a.noverrides, a.nmi_lint);
	kprintf("acpi fadt hw_reduced=%u reset_reg_sup=%u", !!(a.fadt_flags & FADT_HW_REDUCED),
		!!(a.fadt_flags & FADT_RESET_REG_SUP));
	print_gas("sleep_control", &a.sleep_control);
	print_gas("sleep_status", &a.sleep_status);
	print_gas("reset", &a.reset);
	kprintf(" reset_value=0x%x\n", a.reset_value);
	kprintf("acpi dsdt len=%u pnp0a03=%u pnp0501=%u s5_slp_typ=%d mmio32=0x%lx-0x%lx "
		"mmio64=0x%lx-0x%lx\n", a.dsdt_len, a.pnp0a03, a.pnp0501, a.s5_slp_typ,
		a.m32_min, a.m32_max, a.m64_min, a.m64_max);

	if (!a.ncpus)
		fail("MADT lists no enabled local APIC");
	u32 me = lapic_id();
	bool found = false;
	for (u32 i = 0; i < a.ncpus; i++)
		found |= a.apic_ids[i] == me;
	if (!found)
		fail("our APIC id %u is not in the MADT", me);
	if (a.nioapic != 1 || a.ioapic_addr != IOAPIC_BASE || a.lapic_addr != LAPIC_BASE)
		fail("MADT interrupt controllers are not the machine's");

	/* The same machine as the MP table, where there is one. */
	struct mp_info mp;
	if (mptable_read(&mp)) {
		u32 same = 0;
		/* No override means identity (ACPI's default for ISA IRQs). */
		for (int irq = 0; irq < 16; irq++)
			same += (a.isa_gsi[irq] < 0 ? irq : a.isa_gsi[irq]) == mp.isa_irq_pin[irq];
		kprintf("acpi vs_mptable cpus=%u mp_cpus=%u ioapic_id=%u mp_ioapic_id=%u "
			"isa_routes_same=%u\n", a.ncpus, mp.ncpus, a.ioapic_id, mp.ioapic_id, same);
		if (a.ncpus != mp.ncpus || a.ioapic_id != mp.ioapic_id || same != 16)
			fail("MADT and MP table describe different machines");
	}
	if (!(a.fadt_flags & FADT_HW_REDUCED))
		fail("FADT is not hardware-reduced");
	if (a.sleep_control.space != ACPI_GAS_IO || !a.sleep_control.addr)
		fail("FADT has no sleep control register in port I/O");
	if (a.s5_slp_typ < 0)
		fail("DSDT has no \\_S5 package");
	if (!a.pnp0a03 || !a.pnp0501)
		fail("DSDT lacks the PCI host bridge or COM1");
	if (!a.has_m32)
		fail("PCI0 _CRS has no 32-bit memory window");
}

/* hlt with the LAPIC timer armed for `ms`; returns when it fired. */
static void wait_ms_hlt(u32 ms)
{
	lapic_enable();
	pic_mask_all();
	u32 before = irq_count[VEC_TIMER];
	lapic_timer_oneshot_ms(ms);
	for (;;) {
		cli();
		if (irq_count[VEC_TIMER] != before)
			break;
		sti_hlt();
	}
	sti();
}

static void need_io_byte(const char *what, const struct acpi_gas *g)
{
	if (g->space != ACPI_GAS_IO || g->width != 8 || !g->addr || g->addr > 0xffff)
		fail("FADT %s is not a byte register in port I/O", what);
}

void test_acpi_poweroff(void)
{
	struct acpi_info a;
	if (!acpi_read(&a))
		fail("no ACPI RSDP found");
	need_io_byte("sleep control register", &a.sleep_control);
	if (a.s5_slp_typ < 0)
		fail("DSDT has no \\_S5 package");
	/* As Linux's acpi_hw_extended_sleep(): clear WAK_STS, then SLP_TYP | SLP_EN. */
	if (a.sleep_status.space == ACPI_GAS_IO && a.sleep_status.addr)
		outb((u16)a.sleep_status.addr, 0x80);
	u8 v = (u8)(((a.s5_slp_typ << 2) & 0x1c) | 0x20);
	kprintf("acpi-poweroff: writing 0x%x to port 0x%lx (SLP_TYP=%d SLP_EN)\n", v,
		a.sleep_control.addr, a.s5_slp_typ);
	outb((u16)a.sleep_control.addr, v);
	wait_ms_hlt(1000);
	fail("still running 1s after the ACPI S5 sleep command");
}

void test_acpi_reset(void)
{
	struct acpi_info a;
	if (!acpi_read(&a))
		fail("no ACPI RSDP found");
	if (!(a.fadt_flags & FADT_RESET_REG_SUP))
		fail("FADT says the reset register is not supported");
	need_io_byte("reset register", &a.reset);
	kprintf("acpi-reset: writing 0x%x to port 0x%lx\n", a.reset_value, a.reset.addr);
	outb((u16)a.reset.addr, a.reset_value);
	wait_ms_hlt(1000);
	fail("still running 1s after writing the ACPI reset register");
}

static u64 align_up(u64 v, u64 a) { return (v + a - 1) & ~(a - 1); }

/* Memory BARs of every function on bus 0 (64-bit BARs counted once). */
static int collect_mem_bars(struct pci_bar *out, int max)
{
	struct pci_fn fns[64];
	int nf = pci_scan(fns, ARRAY_SIZE(fns)), n = 0;
	for (int i = 0; i < nf && i < (int)ARRAY_SIZE(fns); i++) {
		u8 hdr = pci_read8(fns[i], PCI_HEADER) & 0x7f;
		int nbars = hdr == 0 ? 6 : hdr == 1 ? 2 : 0;
		for (int b = 0; b < nbars; b++) {
			struct pci_bar bar;
			pci_bar_probe(fns[i], b, &bar);
			if (bar.present && !bar.io && n < max)
				out[n++] = bar;
			if (bar.is64)
				b++;
		}
	}
	return n;
}

u64 acpi_free_bar_range(const struct acpi_info *a, bool is64, u64 size, bool high)
{
	bool has = is64 ? a->has_m64 : a->has_m32;
	u64 lo = is64 ? a->m64_min : a->m32_min, hi = is64 ? a->m64_max : a->m32_max;
	if (!has)
		fail("the DSDT has no %s-bit window", is64 ? "64" : "32");
	if (hi > MAPPABLE_END - 1)
		hi = MAPPABLE_END - 1;
	if (!size || (size & (size - 1)))
		fail("BAR size 0x%lx is not a power of two", size);
	struct pci_bar bars[64];
	int n = collect_mem_bars(bars, ARRAY_SIZE(bars));
	if (hi - lo + 1 < size)
		fail("window 0x%lx-0x%lx is smaller than the BAR", lo, hi);
	u64 cand = high ? ((hi + 1 - size) & ~(size - 1)) : align_up(lo, size);
	for (int tries = 0; tries < 64; tries++) {
		if (cand < lo || cand + size - 1 > hi || cand + size - 1 < cand)
			break;
		int hit = -1;
		for (int i = 0; i < n && hit < 0; i++)
			if (cand < bars[i].addr + bars[i].size && bars[i].addr < cand + size)
				hit = i;
		if (hit < 0)
			return cand;
		/* Step past (or below) the BAR in the way, keeping alignment. */
		cand = high ? ((bars[hit].addr - size) & ~(size - 1))
			    : align_up(bars[hit].addr + bars[hit].size, size);
	}
	fail("no free aligned 0x%lx-byte range in window 0x%lx-0x%lx", size, lo, hi);
}
