// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Address-range dispatch for port I/O and MMIO: ranges map to devices.
