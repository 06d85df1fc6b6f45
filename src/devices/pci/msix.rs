// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! MSI-X: the capability, the vector table and the pending-bit array, with the mask and enable rules.
//!
//! [`MsixState`] is plain data. Table and message-control writes return
//! [`MsixEvent`]s; the owner turns them into KVM work (rebuild an MSI route,
//! attach or detach an irqfd). A vector can interrupt only when it is
//! [`MsixState::deliverable`]; while it is not, the owner records arrivals
//! with [`MsixState::set_pending`], and when it becomes deliverable again
//! [`MsixState::take_newly_deliverable`] names the pending ones to inject,
//! once each.
//!
//! Table accesses are a dword, or a qword aligned to 8; other widths and
//! misaligned accesses read 0 and are ignored on write (logged), offsets
//! past the table read 0. The same holds for the PBA, whose writes are
//! always ignored (the owner simply drops them).

use thiserror::Error;

use crate::irq::MsiMessage;

use super::malformed_access;

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Offset of Message Control inside the capability (after id and next).
pub const MSIX_MSG_CTRL: u16 = 2;
/// Message Control: MSI-X enable.
pub const MSG_CTRL_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
pub const MSG_CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// The most entries an MSI-X table can have: the table size field is 11
/// bits holding N-1.
pub const MSIX_MAX_TABLE_SIZE: u16 = 2048;
/// Bytes per table entry: address low, address high, data, vector control.
pub const TABLE_ENTRY_SIZE: u64 = 16;
/// Vector control: the entry is masked.
const ENTRY_MASKED: u32 = 1;

/// Why an MSI-X capability could not be built (device parameters).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MsixError {
    #[error("{vectors} MSI-X vectors requested; give between 1 and 2048")]
    Vectors { vectors: u16 },
    #[error("MSI-X {what} BAR index {bir} is not a BAR (0..=5)")]
    Bir { what: &'static str, bir: u8 },
    #[error("MSI-X {what} offset {offset:#x} is not 8-byte aligned")]
    Offset { what: &'static str, offset: u32 },
}

/// Body (everything after id and next pointer) and write mask of an MSI-X
/// capability, for [`super::config::PciConfig::add_capability`]. Only the
/// enable and function-mask bits of Message Control are writable.
pub fn msix_capability(
    vectors: u16,
    table_bir: u8,
    table_off: u32,
    pba_bir: u8,
    pba_off: u32,
) -> Result<(Vec<u8>, Vec<u8>), MsixError> {
    if !(1..=MSIX_MAX_TABLE_SIZE).contains(&vectors) {
        return Err(MsixError::Vectors { vectors });
    }
    for (what, bir, offset) in [("table", table_bir, table_off), ("PBA", pba_bir, pba_off)] {
        if bir > 5 {
            return Err(MsixError::Bir { what, bir });
        }
        if offset % 8 != 0 {
            return Err(MsixError::Offset { what, offset });
        }
    }
    let mut body = Vec::with_capacity(10);
    body.extend_from_slice(&(vectors - 1).to_le_bytes());
    body.extend_from_slice(&(table_off | u32::from(table_bir)).to_le_bytes());
    body.extend_from_slice(&(pba_off | u32::from(pba_bir)).to_le_bytes());
    let mut wmask = vec![0u8; body.len()];
    wmask[..2].copy_from_slice(&(MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK).to_le_bytes());
    Ok((body, wmask))
}

/// What a guest write changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsixEvent {
    /// The entry's address or data changed: its route must be rebuilt.
    EntryUpdated {
        vector: u16,
    },
    /// The entry's own mask bit went from 0 to 1.
    Masked {
        vector: u16,
    },
    /// The entry's own mask bit went from 1 to 0.
    Unmasked {
        vector: u16,
    },
    Enabled,
    Disabled,
    FunctionMasked,
    FunctionUnmasked,
}

/// One table entry. Vector control keeps only its mask bit; the reserved
/// bits read 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    pub addr_lo: u32,
    pub addr_hi: u32,
    pub data: u32,
    pub ctrl: u32,
}

impl Default for MsixEntry {
    /// Entries come out of reset masked.
    fn default() -> Self {
        MsixEntry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: ENTRY_MASKED,
        }
    }
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.ctrl & ENTRY_MASKED != 0
    }
}

/// MSI-X table, PBA, and the two Message Control bits of one function.
#[derive(Clone, Debug)]
pub struct MsixState {
    entries: Vec<MsixEntry>,
    pba: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixState {
    /// `vectors` should be the count given to [`msix_capability`].
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors);
        MsixState {
            entries: vec![MsixEntry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
        }
    }

    pub fn vectors(&self) -> u16 {
        // `new` took a u16, so this fits.
        self.entries.len() as u16
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    pub fn entry(&self, v: u16) -> Option<MsixEntry> {
        self.entries.get(usize::from(v)).copied()
    }

    /// Reads the table at `offset` (relative to the table's start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !table_access_is_valid(offset, data.len()) {
            malformed_access(format_args!(
                "MSI-X table read at {offset:#x} size {}",
                data.len()
            ));
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let dword = self.table_dword(offset + 4 * i as u64).unwrap_or(0);
            chunk.copy_from_slice(&dword.to_le_bytes());
        }
    }

    /// Writes the table; a qword is two dword writes, low first.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsixEvent> {
        let mut events = Vec::new();
        if !table_access_is_valid(offset, data.len()) {
            malformed_access(format_args!(
                "MSI-X table write at {offset:#x} size {}",
                data.len()
            ));
            return events;
        }
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if let Some(event) = self.write_table_dword(offset + 4 * i as u64, value) {
                if !events.contains(&event) {
                    events.push(event);
                }
            }
        }
        events
    }

    /// Reads the pending-bit array at `offset` (relative to its start).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !table_access_is_valid(offset, data.len()) {
            malformed_access(format_args!(
                "MSI-X PBA read at {offset:#x} size {}",
                data.len()
            ));
            return;
        }
        let Some(&qword) = usize::try_from(offset / 8)
            .ok()
            .and_then(|i| self.pba.get(i))
        else {
            return;
        };
        let bytes = qword.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Applies a new Message Control value (as the config space now holds
    /// it) and reports which of the two bits changed.
    pub fn write_control(&mut self, msg_ctrl: u16) -> Vec<MsixEvent> {
        let enabled = msg_ctrl & MSG_CTRL_ENABLE != 0;
        let function_masked = msg_ctrl & MSG_CTRL_FUNCTION_MASK != 0;
        let mut events = Vec::new();
        if enabled != self.enabled {
            events.push(if enabled {
                MsixEvent::Enabled
            } else {
                MsixEvent::Disabled
            });
        }
        if function_masked != self.function_masked {
            events.push(if function_masked {
                MsixEvent::FunctionMasked
            } else {
                MsixEvent::FunctionUnmasked
            });
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        events
    }

    /// Whether vector `v` may interrupt now: MSI-X enabled, function not
    /// masked, entry not masked. An unknown vector is never deliverable.
    pub fn deliverable(&self, v: u16) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(usize::from(v))
                .is_some_and(|e| !e.masked())
    }

    /// Records that vector `v` fired while it was not deliverable.
    pub fn set_pending(&mut self, v: u16) {
        if let Some((word, bit)) = self.pba_bit(v) {
            self.pba[word] |= bit;
        }
    }

    /// Clears vector `v`'s pending bit and says whether it was set.
    pub fn take_pending(&mut self, v: u16) -> bool {
        let Some((word, bit)) = self.pba_bit(v) else {
            return false;
        };
        let was = self.pba[word] & bit != 0;
        self.pba[word] &= !bit;
        was
    }

    pub fn pending(&self, v: u16) -> bool {
        self.pba_bit(v)
            .is_some_and(|(word, bit)| self.pba[word] & bit != 0)
    }

    /// The message vector `v` sends (whether or not it is deliverable).
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        let e = self.entries.get(usize::from(v))?;
        Some(MsiMessage {
            address: u64::from(e.addr_hi) << 32 | u64::from(e.addr_lo),
            data: e.data,
        })
    }

    /// After `events` (from one write), the vectors that became deliverable
    /// with their pending bit set. Their bits are cleared: the owner injects
    /// each exactly once ("unmask with the bit set: inject once").
    pub fn take_newly_deliverable(&mut self, events: &[MsixEvent]) -> Vec<u16> {
        let all = events
            .iter()
            .any(|e| matches!(e, MsixEvent::Enabled | MsixEvent::FunctionUnmasked));
        let candidates: Vec<u16> = if all {
            (0..self.vectors()).collect()
        } else {
            events
                .iter()
                .filter_map(|e| match e {
                    MsixEvent::Unmasked { vector } => Some(*vector),
                    _ => None,
                })
                .collect()
        };
        candidates
            .into_iter()
            .filter(|&v| self.deliverable(v) && self.take_pending(v))
            .collect()
    }

    fn pba_bit(&self, v: u16) -> Option<(usize, u64)> {
        (usize::from(v) < self.entries.len()).then(|| (usize::from(v / 64), 1u64 << (v % 64)))
    }

    fn table_dword(&self, offset: u64) -> Option<u32> {
        let entry = self
            .entries
            .get(usize::try_from(offset / TABLE_ENTRY_SIZE).ok()?)?;
        Some(match offset % TABLE_ENTRY_SIZE {
            0 => entry.addr_lo,
            4 => entry.addr_hi,
            8 => entry.data,
            _ => entry.ctrl,
        })
    }

    fn write_table_dword(&mut self, offset: u64, value: u32) -> Option<MsixEvent> {
        let index = usize::try_from(offset / TABLE_ENTRY_SIZE).ok()?;
        let entry = self.entries.get_mut(index)?;
        // index < entries.len(), which `new` took from a u16.
        let vector = index as u16;
        let field = match offset % TABLE_ENTRY_SIZE {
            0 => &mut entry.addr_lo,
            4 => &mut entry.addr_hi,
            8 => &mut entry.data,
            _ => {
                let was_masked = entry.masked();
                entry.ctrl = value & ENTRY_MASKED;
                return match (was_masked, entry.masked()) {
                    (false, true) => Some(MsixEvent::Masked { vector }),
                    (true, false) => Some(MsixEvent::Unmasked { vector }),
                    _ => None,
                };
            }
        };
        let changed = *field != value;
        *field = value;
        changed.then_some(MsixEvent::EntryUpdated { vector })
    }
}

/// A dword, or a qword aligned to 8 (so it stays inside one entry).
fn table_access_is_valid(offset: u64, len: usize) -> bool {
    match len {
        4 => offset % 4 == 0,
        8 => offset % 8 == 0,
        _ => false,
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
