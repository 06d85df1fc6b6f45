// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// Reads the command line and the memory map from whichever boot protocol
// entered us: Linux boot_params (zero page) or PVH hvm_start_info.
#include "common.h"

/* boot_params (zero page) offsets, Documentation/arch/x86/zero-page.rst */
#define BP_ACPI_RSDP_ADDR	0x070
#define BP_EXT_RAMDISK_IMAGE	0x0c0
#define BP_EXT_RAMDISK_SIZE	0x0c4
#define BP_EXT_CMD_LINE_PTR	0x0c8
#define BP_RAMDISK_IMAGE	0x218
#define BP_RAMDISK_SIZE		0x21c
#define BP_E820_ENTRIES		0x1e8
#define BP_CMD_LINE_PTR		0x228
#define BP_E820_TABLE		0x2d0
#define BP_E820_TABLE_MAX	128

/* struct hvm_start_info, xen/include/public/arch-x86/hvm/start_info.h */
#define PVH_MAGIC		0x336ec578
#define PVH_NR_MODULES		12
#define PVH_MODLIST_PADDR	16
#define PVH_CMDLINE_PADDR	24
#define PVH_RSDP_PADDR		32
#define PVH_MEMMAP_PADDR	40
#define PVH_MEMMAP_ENTRIES	48
#define PVH_MEMMAP_ENTRY_SIZE	24

#define CMDLINE_MAX 4096

struct boot_info boot;
static char cmdline_buf[CMDLINE_MAX] NOINIT;

static u8 rd8(u64 a) { return *(volatile u8 *)a; }
static u32 rd32(u64 a) { return *(volatile u32 *)a; }
static u64 rd64(u64 a) { return *(volatile u64 *)a; }

static void copy_cmdline(u64 pa)
{
	size_t n = 0;
	if (pa && pa < 0x100000000ull) {
		const char *s = (const char *)pa;
		while (n < CMDLINE_MAX - 1 && s[n]) {
			cmdline_buf[n] = s[n];
			n++;
		}
	}
	cmdline_buf[n] = 0;
	boot.cmdline = cmdline_buf;
}

static void add_e820(u64 addr, u64 size, u32 type)
{
	if (boot.e820_count >= E820_MAX)
		return;
	struct e820_entry *e = &boot.e820[boot.e820_count++];
	e->addr = addr;
	e->size = size;
	e->type = type;
}

void boot_parse(u32 kind, u64 info)
{
	boot.kind = kind;
	boot.e820_count = 0;
	boot.rsdp = 0;
	if (kind == BOOT_PVH) {
		if (rd32(info) != PVH_MAGIC) {
			copy_cmdline(0);
			fail("hvm_start_info magic is 0x%x, want 0x%x", rd32(info), PVH_MAGIC);
		}
		copy_cmdline(rd64(info + PVH_CMDLINE_PADDR));
		boot.rsdp = rd64(info + PVH_RSDP_PADDR);
		/* The first module is the initrd: {u64 paddr, u64 size, ...}. */
		u64 mods = rd64(info + PVH_MODLIST_PADDR);
		if (rd32(info + PVH_NR_MODULES) && mods) {
			boot.initrd_addr = rd64(mods);
			boot.initrd_size = rd64(mods + 8);
		}
		u64 map = rd64(info + PVH_MEMMAP_PADDR);
		u32 n = rd32(info + PVH_MEMMAP_ENTRIES);
		for (u32 i = 0; map && i < n; i++) {
			u64 e = map + i * PVH_MEMMAP_ENTRY_SIZE;
			add_e820(rd64(e), rd64(e + 8), rd32(e + 16));
		}
		return;
	}
	u64 cmd = rd32(info + BP_CMD_LINE_PTR) | ((u64)rd32(info + BP_EXT_CMD_LINE_PTR) << 32);
	copy_cmdline(cmd);
	boot.rsdp = rd64(info + BP_ACPI_RSDP_ADDR);
	boot.initrd_addr = rd32(info + BP_RAMDISK_IMAGE) |
			   ((u64)rd32(info + BP_EXT_RAMDISK_IMAGE) << 32);
	boot.initrd_size = rd32(info + BP_RAMDISK_SIZE) |
			   ((u64)rd32(info + BP_EXT_RAMDISK_SIZE) << 32);
	u32 n = rd8(info + BP_E820_ENTRIES);
	if (n > BP_E820_TABLE_MAX)
		n = BP_E820_TABLE_MAX;
	for (u32 i = 0; i < n; i++) {
		u64 e = info + BP_E820_TABLE + i * 20;
		add_e820(rd64(e), rd64(e + 8), rd32(e + 16));
	}
}

const char *param(const char *key)
{
	size_t klen = strlen(key);
	const char *p = boot.cmdline;
	while (p && *p) {
		while (*p == ' ')
			p++;
		if (str_eq_n(p, key, klen) && p[klen] == '=')
			return p + klen + 1;
		while (*p && *p != ' ')
			p++;
	}
	return NULL;
}

/* Whether `key=value` is on the command line, exactly (value ends at a space). */
bool param_is(const char *key, const char *value)
{
	const char *v = param(key);
	size_t n = strlen(value);
	return v && str_eq_n(v, value, n) && (v[n] == 0 || v[n] == ' ');
}

u64 param_u64(const char *key, u64 dflt)
{
	const char *v = param(key);
	u64 out;
	if (!v)
		return dflt;
	if (!parse_u64(v, &out))
		fail("bad number in %s=", key);
	return out;
}

bool e820_is_ram(u64 addr, u64 size)
{
	for (u32 i = 0; i < boot.e820_count; i++) {
		const struct e820_entry *e = &boot.e820[i];
		if (e->type == E820_RAM && addr >= e->addr && addr + size <= e->addr + e->size)
			return true;
	}
	return false;
}

u64 e820_ram_top(void)
{
	u64 top = 0;
	for (u32 i = 0; i < boot.e820_count; i++) {
		const struct e820_entry *e = &boot.e820[i];
		if (e->type == E820_RAM && e->addr + e->size > top)
			top = e->addr + e->size;
	}
	return top;
}
