// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Our own TSS and IDT (head.S already loaded our GDT and page tables), the
// exception report, and the shared interrupt counter.
#include "cpu.h"
#include "apic.h"
#include "mm.h"

struct tss64 {
	u32 reserved0;
	u64 rsp[3];
	u64 reserved1;
	u64 ist[7];
	u64 reserved2;
	u16 reserved3;
	u16 iomap_base;
} __attribute__((packed));

struct desc_ptr {
	u16 limit;
	u64 base;
} __attribute__((packed));

extern u64 gdt_tss[2];
extern const char idt[], idt_end[];	/* built complete in isr.S */

volatile u32 irq_count[256];

static struct tss64 tss NOINIT;
static u8 int_stack[STACK_SIZE] __attribute__((aligned(16))) NOINIT;
static u8 user_stack[4 * STACK_SIZE] __attribute__((aligned(16))) NOINIT;

void cpu_load_idt(void)
{
	struct desc_ptr p = { (u16)(idt_end - idt - 1), (u64)idt };
	__asm__ volatile("lidt %0" ::"m"(p));
}

void cpu_init(void)
{
	memset(&tss, 0, sizeof(tss));
	tss.rsp[0] = (u64)(int_stack + sizeof(int_stack));
	tss.iomap_base = sizeof(tss);	/* no I/O bitmap: CPL3 gets no ports */
	u64 base = (u64)&tss, limit = sizeof(tss) - 1;
	gdt_tss[0] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
		     (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
	gdt_tss[1] = base >> 32;
	__asm__ volatile("ltr %w0" ::"r"(TSS_SEL));

	cpu_load_idt();
	/*
	 * A BIOS leaves the 8259s at vector base 8 with the PIT running: once
	 * we sti, IRQ0 would arrive as a fake #DF. Only the IOAPIC/MSI deliver.
	 */
	pic_mask_all();
	map_high_ram();
}

static const char *exception_name(u64 v)
{
	static const char *const names[] = {
		"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
		"#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF", "reserved",
		"#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
	};
	return v < ARRAY_SIZE(names) ? names[v] : "exception";
}

void isr_dispatch(struct frame *f)
{
	if (f->vector < 32) {
		u64 cr2;
		__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
		fail("exception vec=%lu name=%s err=0x%lx rip=0x%lx cs=0x%lx rsp=0x%lx cr2=0x%lx",
		     f->vector, exception_name(f->vector), f->error, f->rip, f->cs, f->rsp, cr2);
	}
	irq_count[f->vector]++;
	if (f->vector != VEC_SPURIOUS)
		lapic_eoi();
}

u64 user_call(u64 (*fn)(u64), u64 arg, bool interrupts)
{
	return run_user(fn, arg, (u64)(user_stack + sizeof(user_stack)),
			interrupts ? RFLAGS_IF : 0);
}
