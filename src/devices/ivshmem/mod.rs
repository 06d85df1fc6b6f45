// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem PCI device (1af4:1110) as QEMU's guests see it.

pub mod doorbell;
pub mod memory;
