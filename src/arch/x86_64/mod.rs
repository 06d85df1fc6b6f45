// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! x86_64: memory map, kernel loading, boot-time CPU state, MP table.

pub mod boot;
pub mod layout;
pub mod mptable;
pub mod regs;
