// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! PCI: the root complex on bus 0 (host bridge, configuration mechanism #1),
//! configuration space with its masks and BARs, and MSI-X.
//!
//! Everything here is plain data driven by guest accesses; nothing does
//! I/O. Writes return what changed and the device's owner acts on it.

use std::sync::atomic::{AtomicU64, Ordering};

pub mod config;
pub mod msix;
pub mod root;

/// How many malformed accesses are logged before we go quiet; after that
/// only every 4096th is logged, with the running count, so a guest that
/// hammers odd widths cannot flood the log.
const MALFORMED_LOG_BURST: u64 = 16;
const MALFORMED_LOG_EVERY: u64 = 4096;

static MALFORMED_ACCESSES: AtomicU64 = AtomicU64::new(0);

/// Logs (rate-limited) an access a guest should not make; the caller then
/// ignores it. Formatting only happens when the line is actually logged.
fn malformed_access(what: std::fmt::Arguments) {
    let n = MALFORMED_ACCESSES.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= MALFORMED_LOG_BURST || n % MALFORMED_LOG_EVERY == 0 {
        log::warn!("pci: ignoring malformed guest access: {what} ({n} so far)");
    }
}
