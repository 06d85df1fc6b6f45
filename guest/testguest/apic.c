// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// LAPIC, IOAPIC and time. KVM's in-kernel LAPIC timer counts at 1 GHz
// (divide 1), which both QEMU and ivvmm use; the TSC is calibrated
// against it once, on first use.
#include "apic.h"
#include "cpu.h"

#define MSR_APIC_BASE	0x1b
#define APIC_BASE_EN	(1u << 11)
#define ICR_PENDING	(1u << 12)
#define LVT_MASKED	(1u << 16)
#define LAPIC_TIMER_HZ	1000000000ull

void lapic_enable(void)
{
	u64 base = rdmsr(MSR_APIC_BASE);
	if (!(base & APIC_BASE_EN))
		wrmsr(MSR_APIC_BASE, base | APIC_BASE_EN);
	lapic_write(LAPIC_SVR, 0x100 | VEC_SPURIOUS);
}

bool lapic_send_ipi(u32 dest, u32 icr_lo)
{
	lapic_write(LAPIC_ICR_HI, dest << 24);
	lapic_write(LAPIC_ICR_LO, icr_lo);
	for (int i = 0; i < 100000; i++)
		if (!(lapic_read(LAPIC_ICR_LO) & ICR_PENDING))
			return true;
	return false;
}

void lapic_timer_oneshot_ms(u32 ms)
{
	lapic_write(LAPIC_TIMER_DIV, 0xa);	/* divide by 128 */
	lapic_write(LAPIC_LVT_TIMER, VEC_TIMER);
	u64 ticks = (u64)ms * (LAPIC_TIMER_HZ / 1000 / 128);
	lapic_write(LAPIC_TIMER_INIT, ticks > 0xffffffffull ? 0xffffffffu : (u32)ticks);
}

void lapic_timer_stop(void)
{
	lapic_write(LAPIC_TIMER_INIT, 0);
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
}

static void ioapic_write(u32 reg, u32 v)
{
	mmio_write32(IOAPIC_BASE, reg);
	mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(u32 pin, u8 vector, u32 dest_apic)
{
	ioapic_write(0x11 + 2 * pin, dest_apic << 24);
	ioapic_write(0x10 + 2 * pin, vector);	/* fixed, physical, high, edge, unmasked */
}

void ioapic_mask(u32 pin)
{
	ioapic_write(0x10 + 2 * pin, LVT_MASKED);
}

void pic_mask_all(void)
{
	outb(0x21, 0xff);
	outb(0xa1, 0xff);
}

static u64 tsc_us;

u64 tsc_per_us(void)
{
	if (tsc_us)
		return tsc_us;
	lapic_enable();
	lapic_write(LAPIC_TIMER_DIV, 0xb);	/* divide by 1: 1 tick = 1 ns */
	lapic_write(LAPIC_LVT_TIMER, LVT_MASKED | VEC_TIMER);
	lapic_write(LAPIC_TIMER_INIT, 0xffffffffu);
	u32 c0 = lapic_read(LAPIC_TIMER_CUR);
	u64 t0 = rdtsc();
	u32 c = c0;
	for (u32 i = 0; i < 1000000 && c0 - c < 2000000; i++)
		c = lapic_read(LAPIC_TIMER_CUR);
	u64 t1 = rdtsc();
	lapic_write(LAPIC_TIMER_INIT, 0);
	u64 ns = c0 - c;
	if (ns < 1000000) {
		kprintf("note: lapic timer does not count (%lu ns), assuming 2 GHz TSC\n", ns);
		tsc_us = 2000;
	} else {
		tsc_us = (t1 - t0) * 1000 / ns;
		if (!tsc_us)
			tsc_us = 1;
	}
	return tsc_us;
}

void udelay(u64 us)
{
	u64 end = rdtsc() + us * tsc_per_us();
	while (rdtsc() < end)
		pause();
}
