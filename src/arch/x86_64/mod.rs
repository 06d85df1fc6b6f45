// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64: memory map, kernel loading, boot-time CPU state, MP table.
//!
//! `layout` is the one place guest physical addresses are named; `boot` loads
//! the kernel and initrd and writes what the kernel reads at entry
//! (`bootparams`); `regs`, `gdt` and `cpuid` put vCPUs in their boot state;
//! `mptable` describes the CPUs and interrupt wiring to the guest.

pub mod boot;
pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

#[cfg(test)]
mod kvm_tests;
