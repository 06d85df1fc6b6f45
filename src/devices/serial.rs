// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! COM1: a vm-superio 16550 at 0x3f8, IRQ 4 through irqfd, stdin as an event source.
