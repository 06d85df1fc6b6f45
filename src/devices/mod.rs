// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The VM's devices: legacy PC pieces and the PCI side with ivshmem.

pub mod acpi_pm;
pub mod i8042;
pub mod ivshmem;
pub mod pci;
pub mod serial;
pub mod serial_output;
