// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Intel MultiProcessor table: CPUs, the IOAPIC and the ISA interrupts.
