// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// smp: start every AP listed in the MP table with INIT-SIPI-SIPI; each one
// reaches long mode through trampoline.S and reports in.
#include "apic.h"
#include "cpu.h"
#include "mptable.h"
#include "tests.h"

#define ICR_INIT	0x00004500	/* INIT, level assert */
#define ICR_SIPI	0x00004600	/* start-up, vector in bits 7:0 */

extern const char ap_tramp_start[], ap_tramp_end[];
extern volatile u32 ap_arrivals;

static volatile u32 ap_up;
static volatile u8 ap_seen[256];

void ap_main(void)
{
	cpu_load_idt();
	u32 id = lapic_id();
	ap_seen[id & 0xff] = 1;
	__asm__ volatile("lock incl %0" : "+m"(ap_up));
}

static bool wait_for_ap(u8 id, u64 timeout_us)
{
	u64 end = rdtsc() + timeout_us * tsc_per_us();
	while (rdtsc() < end) {
		if (ap_seen[id])
			return true;
		pause();
	}
	return ap_seen[id];
}

void test_smp(void)
{
	struct mp_info mp;
	if (!mptable_read(&mp))
		fail("no MP table (_MP_) found");
	kprintf("mptable cpus=%u ioapic=0x%x lapic=0x%x mpf=0x%lx\n", mp.ncpus, mp.ioapic_addr,
		mp.lapic_addr, mp.mpf_addr);
	if (!mp.ncpus)
		fail("MP table lists no enabled CPU");
	if (!e820_is_ram(AP_TRAMPOLINE, 4096))
		fail("0x%x is not usable RAM in the e820 map", AP_TRAMPOLINE);

	lapic_enable();
	u32 bsp = lapic_id();
	tsc_per_us();	/* calibrate before timing anything */
	memcpy((void *)AP_TRAMPOLINE, ap_tramp_start, ap_tramp_end - ap_tramp_start);

	u32 up = 1;
	for (u32 i = 0; i < mp.ncpus; i++) {
		u8 id = mp.apic_ids[i];
		if (id == bsp)
			continue;
		if (!lapic_send_ipi(id, ICR_INIT))
			fail("INIT to apic %u not delivered", id);
		udelay(10000);
		for (int s = 0; s < 2 && !ap_seen[id]; s++) {
			if (!lapic_send_ipi(id, ICR_SIPI | (AP_TRAMPOLINE >> 12)))
				fail("SIPI to apic %u not delivered", id);
			udelay(200);
		}
		bool ok = wait_for_ap(id, 1000000);
		kprintf("smp apic=%u up=%s\n", id, ok ? "yes" : "no");
		up += ok;
	}
	kprintf("smp cpus_up=%u of=%u\n", up, mp.ncpus);
	if (up != mp.ncpus || ap_up != mp.ncpus - 1)
		fail("%u of %u CPUs came up", up, mp.ncpus);
}
