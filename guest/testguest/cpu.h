/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/* GDT/TSS/IDT setup, interrupt bookkeeping and user-mode calls. */
#ifndef TESTGUEST_CPU_H
#define TESTGUEST_CPU_H

#include "common.h"

struct frame {
	u64 r15, r14, r13, r12, r11, r10, r9, r8;
	u64 rbp, rdi, rsi, rdx, rcx, rbx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};

/* Interrupts taken per vector (the MSI-X stubs count here too). */
extern volatile u32 irq_count[256];

void cpu_init(void);
/* Loads the shared IDT on an application processor. */
void cpu_load_idt(void);

#define RFLAGS_IF 0x200
/* Runs fn(arg) at CPL3 on a user stack, with the given RFLAGS (IF or not). */
u64 run_user(u64 (*fn)(u64), u64 arg, u64 stack_top, u64 rflags);
/* run_user on the shared user stack. */
u64 user_call(u64 (*fn)(u64), u64 arg, bool interrupts);

#endif
