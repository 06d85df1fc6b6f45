// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64: memory map, kernel loading, boot-time CPU state, MP and ACPI tables.
//!
//! `layout` is the one place guest physical addresses are named; `boot` loads
//! the kernel and initrd and writes what the kernel reads at entry
//! (`bootparams`); `regs`, `gdt` and `cpuid` put vCPUs in their boot state;
//! `mptable` and `acpi` describe the CPUs, interrupt wiring, PCI windows and
//! power controls to the guest (the MP table for kernels without ACPI).

pub mod acpi;
pub mod boot;
pub mod bootparams;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;

#[cfg(test)]
mod kvm_tests;
