// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// VMM core cases: hello, exit, pci, reboot, triplefault, bad-insn, unhandled, initrd.
#include "common.h"
#include "cpu.h"
#include "pci.h"
#include "tests.h"
#include "user.h"

void test_hello(void)
{
	kputs("Hello from testguest\n");
}

void test_exit(void)
{
	u64 code = param_u64("code", 0);
	if (code > 255)
		fail("code=%lu does not fit in a byte", code);
	kprintf("exit code=%lu\n", code);
	exit_vm((u8)code);
}

void test_pci(void)
{
	struct pci_fn fns[256];
	int n = pci_scan(fns, ARRAY_SIZE(fns));
	bool host_bridge = false;
	for (int i = 0; i < n && i < (int)ARRAY_SIZE(fns); i++) {
		struct pci_fn f = fns[i];
		u32 class_rev = pci_read32(f, 0x08);
		u32 class = class_rev >> 8;
		kprintf("pci 00:%02x.%x vendor=%04x device=%04x class=%06x rev=%02x hdr=%02x\n",
			f.dev, f.fn, pci_read16(f, PCI_VENDOR), pci_read16(f, PCI_DEVICE), class,
			class_rev & 0xff, pci_read8(f, PCI_HEADER));
		if (f.dev == 0 && f.fn == 0 && (class >> 8) == 0x0600)
			host_bridge = true;
	}
	kprintf("pci functions=%d\n", n);
	if (!host_bridge)
		fail("00:00.0 is not a host bridge (class 0600xx)");
}

void test_reboot(void)
{
	kputs("reboot: writing 0xfe to port 0x64\n");
	outb(0x64, 0xfe);
	/* The VMM may act on the reset a little later: give it a second. */
	udelay(1000000);
	fail("still running 1s after the i8042 reset command");
}

void test_triplefault(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) empty = { 0, 0 };
	kputs("triplefault: empty IDT, then ud2\n");
	__asm__ volatile("lidt %0; ud2" ::"m"(empty));
	fail("still running after a triple fault");
}

/*
 * An instruction KVM's emulator does not implement, with its memory operand
 * in MMIO space (nothing is mapped at 0xd0000000): KVM can't finish the
 * access and reports an emulation failure, which must end the VMM with an
 * error naming the exit reason and our RIP. (PVM also fails on the xsetbv.)
 */
void test_bad_insn(void)
{
	u64 cr4;
	kputs("bad-insn: xsave to unbacked MMIO; the VMM must stop with an error\n");
	__asm__ volatile("mov %%cr4, %0" : "=r"(cr4));
	cr4 |= (1ull << 18) | (1ull << 9);	/* OSXSAVE, OSFXSR */
	__asm__ volatile("mov %0, %%cr4" ::"r"(cr4));
	__asm__ volatile("xsetbv" ::"c"(0), "a"(3), "d"(0));
	__asm__ volatile("xsave64 (%0)" ::"r"(0xd0000000ull), "a"(3), "d"(0) : "memory");
	fail("still running after an instruction KVM can't emulate on MMIO");
}

/*
 * Nothing is behind COM2 (0x2f8) or at 0xd0000000 (inside the 32-bit MMIO
 * window, no BAR there): reads return all-ones, writes vanish, and the
 * guest keeps running. Each address is touched many times; the VMM logs
 * it once.
 */
void test_unhandled(void)
{
	u32 bad = 0;
	for (int i = 0; i < 50; i++) {
		outb(0x2fb, 0x80);
		bad += inb(0x2f8) != 0xff;
		bad += inw(0x2f8) != 0xffff;
		bad += inl(0x2f8) != 0xffffffffu;
		mmio_write32(0xd0000000ull, 0x12345678);
		bad += mmio_read32(0xd0000000ull) != 0xffffffffu;
	}
	kprintf("unhandled reads=200 not_all_ones=%u\n", bad);
	if (bad)
		fail("unhandled accesses did not read all-ones");
}

/*
 * The initrd the VMM was given: where the boot protocol says it is (Linux:
 * boot_params ramdisk_image/size; PVH: the first module), inside RAM the
 * e820 map marks usable, and its bytes' FNV-1a hash (computed in user mode)
 * for the host to compare with the file.
 */
void test_initrd(void)
{
	u64 a = boot.initrd_addr, n = boot.initrd_size;
	kprintf("initrd addr=0x%lx size=%lu\n", a, n);
	if (!a || !n)
		fail("no initrd in the boot information");
	if (!e820_is_ram(a, n))
		fail("initrd 0x%lx+0x%lx is not in usable RAM", a, n);
	if (a & 0xfff)
		fail("initrd at 0x%lx is not page-aligned", a);
	static struct hash_job job;
	job = (struct hash_job){ a, n };
	u64 h = user_call(user_fnv1a, (u64)&job, false);
	kprintf("initrd fnv1a=0x%lx\n", h);
}
