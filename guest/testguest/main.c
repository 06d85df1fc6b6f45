// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
// kmain: read the command line, name the test, run it, report the verdict
// on COM1 and through the exit port.
#include "common.h"
#include "cpu.h"
#include "tests.h"

#define EXIT_PORT 0xf4

struct test_case {
	const char *name;
	void (*run)(void);
	bool needs_cpu;	/* IDT/TSS first (everything but the boot benchmark) */
};

static const struct test_case tests[] = {
	{ "hello", test_hello, false },
	{ "exit", test_exit, false },
	{ "pci", test_pci, true },
	{ "reboot", test_reboot, true },
	{ "triplefault", test_triplefault, true },
	{ "bad-insn", test_bad_insn, true },
	{ "unhandled", test_unhandled, true },
	{ "initrd", test_initrd, true },
	{ "smp", test_smp, true },
	{ "serial-echo", test_serial_echo, true },
	{ "ivshmem-ids", test_ivshmem_ids, true },
	{ "ivshmem-regs", test_ivshmem_regs, true },
	{ "ivshmem-data", test_ivshmem_data, true },
	{ "ivshmem-move", test_ivshmem_move, true },
	{ "ivshmem-decode", test_ivshmem_decode, true },
	{ "ivshmem-bw", test_ivshmem_bw, true },
	{ "pingpong", test_pingpong, true },
	{ "msix-mask", test_msix_mask, true },
	{ "doorbell-bad", test_doorbell_bad, true },
	{ "acpi", test_acpi, true },
	{ "acpi-poweroff", test_acpi_poweroff, true },
	{ "acpi-reset", test_acpi_reset, true },
	{ "presence", test_presence, true },
	{ "rejoin-pingpong", test_rejoin_pingpong, true },
	{ "presence-mirror", test_presence_mirror, true },
	{ "ivshmem-shrink", test_ivshmem_shrink, true },
	{ "bar0-storm", test_bar0_storm, true },
};

NORETURN void exit_vm(u8 code)
{
	outb(EXIT_PORT, code);
	for (;;)
		__asm__ volatile("cli; hlt");
}

NORETURN void pass(void)
{
	kputs("PASS\n");
	exit_vm(0);
}

static size_t word_len(const char *s)
{
	size_t n = 0;
	while (s[n] && s[n] != ' ')
		n++;
	return n;
}

NORETURN void kmain(u32 kind, u64 info)
{
	boot_parse(kind, info);
	const char *name = param("test");
	size_t n = name ? word_len(name) : 0;
	kputs("testguest: test=");
	for (size_t i = 0; i < n; i++)
		serial_putc(name[i]);
	serial_putc('\n');
	for (size_t i = 0; name && i < ARRAY_SIZE(tests); i++) {
		const struct test_case *t = &tests[i];
		if (strlen(t->name) != n || !str_eq_n(t->name, name, n))
			continue;
		if (t->needs_cpu)
			cpu_init();
		t->run();
		pass();
	}
	fail("unknown test");
}
