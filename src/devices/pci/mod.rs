// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! PCI: the root complex on bus 0 (host bridge, configuration mechanism #1),
//! configuration space with its masks and BARs, and MSI-X.

pub mod config;
pub mod msix;
pub mod root;
