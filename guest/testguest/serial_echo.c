// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// serial-echo: IRQ 4 through the IOAPIC, the UART's receive interrupt, hlt
// until a whole line has arrived, print it back. Proves stdin -> guest and
// ISA interrupt delivery.
#include "apic.h"
#include "cpu.h"
#include "mptable.h"
#include "tests.h"

#define COM1		0x3f8
#define UART_IER	1
#define UART_MCR	4
#define UART_LSR	5
#define LSR_DR		0x01
#define LINE_MAX	128

void test_serial_echo(void)
{
	struct mp_info mp;
	int pin = 4;
	if (mptable_read(&mp) && mp.isa_irq_pin[4] >= 0)
		pin = mp.isa_irq_pin[4];
	u64 timeout_ms = param_u64("timeout_ms", 30000);

	lapic_enable();
	pic_mask_all();
	ioapic_route(pin, VEC_SERIAL, lapic_id());
	outb(COM1 + UART_MCR, 0x0b);	/* DTR, RTS, OUT2 (gates the IRQ on real UARTs) */
	outb(COM1 + UART_IER, 0x01);	/* received data available */
	kprintf("serial-echo: irq=4 pin=%d vector=0x%x timeout_ms=%lu ready\n", pin, VEC_SERIAL,
		timeout_ms);
	if (timeout_ms)
		lapic_timer_oneshot_ms(timeout_ms > 0xffffffffull ? 0xffffffffu : (u32)timeout_ms);

	char line[LINE_MAX];
	u32 n = 0;
	for (;;) {
		cli();
		bool done = false;
		/*
		 * Read only once IRQ 4 has fired: input that was already waiting
		 * when the receive interrupt got enabled raises it too (as on a
		 * real 16550), so this never deadlocks, and a line can't be
		 * drained by polling alone.
		 */
		while (!done && irq_count[VEC_SERIAL] && (inb(COM1 + UART_LSR) & LSR_DR)) {
			char c = (char)inb(COM1);
			if (c == '\r' || c == '\n')
				done = n > 0;
			else if (n < LINE_MAX - 1)
				line[n++] = c;
		}
		if (done)
			break;
		if (irq_count[VEC_TIMER])
			fail("timeout: no complete line within %lu ms (irqs=%u)", timeout_ms,
			     irq_count[VEC_SERIAL]);
		sti_hlt();
	}
	line[n] = 0;
	outb(COM1 + UART_IER, 0);
	lapic_timer_stop();
	ioapic_mask(pin);
	kprintf("serial-echo: irqs=%u\n", irq_count[VEC_SERIAL]);
	kprintf("echo: %s\n", line);
	if (!irq_count[VEC_SERIAL])
		fail("a line arrived but IRQ 4 was never delivered");
}
