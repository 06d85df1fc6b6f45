/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* Local APIC (xAPIC MMIO), IOAPIC, legacy PIC masking, TSC calibration. */
#ifndef TESTGUEST_APIC_H
#define TESTGUEST_APIC_H

#include "common.h"

#define LAPIC_ID	0x020
#define LAPIC_EOI	0x0b0
#define LAPIC_SVR	0x0f0
#define LAPIC_ICR_LO	0x300
#define LAPIC_ICR_HI	0x310
#define LAPIC_LVT_TIMER	0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_CUR	0x390
#define LAPIC_TIMER_DIV	0x3e0

#define IOAPIC_BASE	0xfec00000

static inline u32 lapic_read(u32 reg) { return mmio_read32(LAPIC_BASE + reg); }
static inline void lapic_write(u32 reg, u32 v) { mmio_write32(LAPIC_BASE + reg, v); }
static inline void lapic_eoi(void) { lapic_write(LAPIC_EOI, 0); }
static inline u32 lapic_id(void) { return lapic_read(LAPIC_ID) >> 24; }

/* Globally and software-enables the local APIC (spurious vector 0xff). */
void lapic_enable(void);
/* Sends an IPI and waits for the ICR to report it delivered. */
bool lapic_send_ipi(u32 dest, u32 icr_lo);
/* One-shot LAPIC timer interrupt on VEC_TIMER after about ms milliseconds. */
void lapic_timer_oneshot_ms(u32 ms);
void lapic_timer_stop(void);

/* Routes IOAPIC pin -> vector, edge/high, fixed, physical destination. */
void ioapic_route(u32 pin, u8 vector, u32 dest_apic);
void ioapic_mask(u32 pin);
/* Masks every 8259 input so only the IOAPIC delivers ISA interrupts. */
void pic_mask_all(void);

#endif
