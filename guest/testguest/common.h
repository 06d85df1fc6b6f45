/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Freestanding basics: port and MMIO accessors, CPU instructions, the console
 * and small library functions. Everything the tests share lives here.
 */
#ifndef TESTGUEST_COMMON_H
#define TESTGUEST_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#include "layout.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NOINIT __attribute__((section(".noinit")))
#define NORETURN __attribute__((noreturn))

/* ---- port I/O ---- */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* ---- MMIO: one access of exactly the named width ---- */
static inline u8 mmio_read8(u64 a) { u8 v; __asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory"); return v; }
static inline u16 mmio_read16(u64 a) { u16 v; __asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u32 mmio_read32(u64 a) { u32 v; __asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline u64 mmio_read64(u64 a) { u64 v; __asm__ volatile("movq (%1), %0" : "=r"(v) : "r"(a) : "memory"); return v; }
static inline void mmio_write8(u64 a, u8 v) { __asm__ volatile("movb %0, (%1)" ::"q"(v), "r"(a) : "memory"); }
static inline void mmio_write16(u64 a, u16 v) { __asm__ volatile("movw %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline void mmio_write32(u64 a, u32 v) { __asm__ volatile("movl %0, (%1)" ::"r"(v), "r"(a) : "memory"); }
static inline void mmio_write64(u64 a, u64 v) { __asm__ volatile("movq %0, (%1)" ::"r"(v), "r"(a) : "memory"); }

/* ---- CPU ---- */
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}
static inline u64 rdmsr(u32 msr)
{
	u32 lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
	__asm__ volatile("wrmsr" ::"c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}
static inline void cli(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void sti(void) { __asm__ volatile("sti" ::: "memory"); }
/* sti takes effect after the next instruction: no wake-up is lost. */
static inline void sti_hlt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
static inline void pause(void) { __asm__ volatile("pause" ::: "memory"); }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }
static inline void reload_cr3(void)
{
	u64 v;
	__asm__ volatile("mov %%cr3, %0; mov %0, %%cr3" : "=r"(v)::"memory");
}

/* ---- lib.c ---- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
bool str_eq_n(const char *a, const char *b, size_t n);
/* Parses decimal or 0x-hex; returns false on garbage or overflow. */
bool parse_u64(const char *s, u64 *out);

/* ---- console.c: COM1, polled ---- */
void serial_putc(char c);
void kputs(const char *s);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- main.c: verdicts ---- */
NORETURN void exit_vm(u8 code);
NORETURN void pass(void);
NORETURN void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- boot.c: what the loader told us ---- */
struct e820_entry {
	u64 addr;
	u64 size;
	u32 type;
};
#define E820_RAM 1
#define E820_MAX 64
struct boot_info {
	u32 kind;		/* BOOT_* */
	const char *cmdline;	/* our copy, NUL-terminated */
	u32 e820_count;
	struct e820_entry e820[E820_MAX];
	u64 initrd_addr, initrd_size;	/* 0, 0 without an initrd */
	u64 rsdp;		/* ACPI RSDP the loader named, 0 if none */
};
extern struct boot_info boot;
void boot_parse(u32 kind, u64 info);
/* Value of the first "key=value" word on the command line, or NULL. */
const char *param(const char *key);
u64 param_u64(const char *key, u64 dflt);
bool param_is(const char *key, const char *value);
bool e820_is_ram(u64 addr, u64 size);
u64 e820_ram_top(void);

/* ---- time (apic.c) ---- */
u64 tsc_per_us(void);
void udelay(u64 us);

#endif
