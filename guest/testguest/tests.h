/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* Every test case. Each returns to pass, or calls fail()/exit_vm(). */
#ifndef TESTGUEST_TESTS_H
#define TESTGUEST_TESTS_H

void test_hello(void);
void test_exit(void);
void test_pci(void);
void test_reboot(void);
void test_triplefault(void);
void test_bad_insn(void);
void test_unhandled(void);
void test_initrd(void);
void test_smp(void);
void test_serial_echo(void);
void test_ivshmem_ids(void);
void test_ivshmem_regs(void);
void test_ivshmem_data(void);
void test_ivshmem_move(void);
void test_ivshmem_decode(void);
void test_ivshmem_bw(void);
void test_pingpong(void);
void test_msix_mask(void);
void test_doorbell_bad(void);
void test_acpi(void);
void test_acpi_poweroff(void);
void test_acpi_reset(void);
void test_presence(void);
void test_rejoin_pingpong(void);
void test_presence_mirror(void);
void test_ivshmem_shrink(void);
void test_bar0_storm(void);

#endif
