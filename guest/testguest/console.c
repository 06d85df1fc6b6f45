// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// COM1 output (polled) and a small printf.
#include "common.h"

#define COM1 0x3f8
#define LSR_THRE 0x20

void serial_putc(char c)
{
	if (c == '\n')
		serial_putc('\r');
	while (!(inb(COM1 + 5) & LSR_THRE))
		pause();
	outb(COM1, (u8)c);
}

void kputs(const char *s)
{
	while (*s)
		serial_putc(*s++);
}

static void put_num(u64 v, unsigned base, int width, bool zero, bool neg, bool upper)
{
	char buf[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;
	do {
		buf[n++] = digits[v % base];
		v /= base;
	} while (v);
	if (neg)
		width--;
	if (neg && zero)
		serial_putc('-');
	for (int i = n; i < width; i++)
		serial_putc(zero ? '0' : ' ');
	if (neg && !zero)
		serial_putc('-');
	while (n)
		serial_putc(buf[--n]);
}

static void kvprintf(const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			serial_putc(*fmt);
			continue;
		}
		fmt++;
		bool zero = false;
		int width = 0, lng = 0;
		if (*fmt == '0') {
			zero = true;
			fmt++;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') {
			lng++;
			fmt++;
		}
		switch (*fmt) {
		case 'd':
		case 'i': {
			long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
			bool neg = v < 0;
			put_num(neg ? -(u64)v : (u64)v, 10, width, zero, neg, false);
			break;
		}
		case 'u':
		case 'x':
		case 'X': {
			u64 v = lng ? va_arg(ap, u64) : va_arg(ap, unsigned);
			put_num(v, *fmt == 'u' ? 10 : 16, width, zero, false, *fmt == 'X');
			break;
		}
		case 'p':
			kputs("0x");
			put_num((u64)va_arg(ap, void *), 16, width, zero, false, false);
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			kputs(s ? s : "(null)");
			break;
		}
		case 'c':
			serial_putc((char)va_arg(ap, int));
			break;
		case '%':
			serial_putc('%');
			break;
		case 0:
			return;
		default:
			serial_putc('%');
			serial_putc(*fmt);
		}
	}
}

void kprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	kvprintf(fmt, ap);
	va_end(ap);
}

NORETURN void fail(const char *fmt, ...)
{
	va_list ap;
	kputs("FAIL: ");
	va_start(ap, fmt);
	kvprintf(fmt, ap);
	va_end(ap);
	serial_putc('\n');
	exit_vm(1);
}
