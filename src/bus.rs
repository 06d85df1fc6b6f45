// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Address-range dispatch for port I/O and MMIO: ranges map to devices.
//!
//! A [`Bus`] is shared by every vCPU thread. Lookups take a read lock; the
//! rare changes (a guest moving a BAR, a device being added) take the write
//! lock. Devices sit behind their own mutex so two vCPUs touching two
//! different devices never contend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

/// A device reachable through a bus. `offset` is relative to the start of the
/// range the device was inserted at; `data.len()` is the access width.
pub trait BusDevice: Send {
    /// Fills `data`. Devices must fill every byte (all-ones for "nothing here").
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write; it must tolerate any width and any offset in range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device as the bus holds it.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    #[error("{bus} range {base:#x}+{len:#x} overlaps an existing range at {other:#x}")]
    Overlap {
        bus: &'static str,
        base: u64,
        len: u64,
        other: u64,
    },
    #[error("{bus} range {base:#x}+{len:#x} is empty or wraps around the address space")]
    InvalidRange {
        bus: &'static str,
        base: u64,
        len: u64,
    },
    #[error("{bus} has no range starting at {base:#x}")]
    NotFound { bus: &'static str, base: u64 },
}

struct Range {
    len: u64,
    device: SharedDevice,
}

/// An address space (PIO or MMIO) mapping ranges to devices.
pub struct Bus {
    name: &'static str,
    ranges: RwLock<BTreeMap<u64, Range>>,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            ranges: RwLock::new(BTreeMap::new()),
        }
    }

    /// Adds `device` at `[base, base + len)`; ranges never overlap.
    pub fn insert(&self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        self.check_free(&ranges, base, len, None)?;
        ranges.insert(base, Range { len, device });
        Ok(())
    }

    /// Removes the range that starts at `base`.
    pub fn remove(&self, base: u64) -> Result<SharedDevice, BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        ranges
            .remove(&base)
            .map(|r| r.device)
            .ok_or(BusError::NotFound {
                bus: self.name,
                base,
            })
    }

    /// Moves the range at `old_base` to `new_base`, keeping its length; on
    /// error the bus is unchanged.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let len = ranges
            .get(&old_base)
            .map(|r| r.len)
            .ok_or(BusError::NotFound {
                bus: self.name,
                base: old_base,
            })?;
        self.check_free(&ranges, new_base, len, Some(old_base))?;
        if let Some(range) = ranges.remove(&old_base) {
            ranges.insert(new_base, range);
        }
        Ok(())
    }

    /// Whether any range covers `addr`.
    pub fn contains(&self, addr: u64) -> bool {
        self.lookup(addr).is_some()
    }

    /// Dispatches a read; returns false (leaving `data` alone) when no device
    /// covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup_access(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup_access(addr, data.len()) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }

    fn lookup(&self, addr: u64) -> Option<(SharedDevice, u64, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, range) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < range.len).then(|| (range.device.clone(), offset, range.len))
    }

    /// An access must lie entirely inside one range.
    fn lookup_access(&self, addr: u64, width: usize) -> Option<(SharedDevice, u64)> {
        let (device, offset, len) = self.lookup(addr)?;
        let end = offset.checked_add(width as u64)?;
        (end <= len).then_some((device, offset))
    }

    fn check_free(
        &self,
        ranges: &BTreeMap<u64, Range>,
        base: u64,
        len: u64,
        ignore: Option<u64>,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => {
                return Err(BusError::InvalidRange {
                    bus: self.name,
                    base,
                    len,
                })
            }
        };
        let clash = ranges
            .range(..end)
            .filter(|(b, _)| Some(**b) != ignore)
            .find(|(b, r)| **b + r.len > base);
        match clash {
            Some((other, _)) => Err(BusError::Overlap {
                bus: self.name,
                base,
                len,
                other: *other,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the last access and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn dispatches_with_offsets_relative_to_the_range() {
        let bus = Bus::new("mmio");
        let dev = probe();
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0x1010, &mut data));
        assert_eq!(data, [0x10; 4]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        assert_eq!(
            dev.lock().unwrap().last_write,
            Some((0xfc, vec![1, 2, 3, 4]))
        );
    }

    #[test]
    fn accesses_outside_or_straddling_a_range_are_unhandled() {
        let bus = Bus::new("mmio");
        bus.insert(0x1000, 0x100, probe()).unwrap();
        let mut data = [0xaa; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x1100, &mut data));
        assert!(!bus.read(0x10fe, &mut data), "straddles the end");
        assert_eq!(data, [0xaa; 4]);
        assert!(!bus.write(u64::MAX - 1, &[0; 4]));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let bus = Bus::new("pio");
        bus.insert(0x3f8, 8, probe()).unwrap();
        assert!(matches!(
            bus.insert(0x3f0, 9, probe()),
            Err(BusError::Overlap { other: 0x3f8, .. })
        ));
        assert!(matches!(
            bus.insert(0x3ff, 1, probe()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x400, 1, probe()).unwrap();
        bus.insert(0x3f0, 8, probe()).unwrap();
        assert!(matches!(
            bus.insert(0, 0, probe()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe()),
            Err(BusError::InvalidRange { .. })
        ));
    }

    #[test]
    fn relocate_moves_a_range_and_checks_the_destination() {
        let bus = Bus::new("mmio");
        bus.insert(0x1000, 0x100, probe()).unwrap();
        bus.insert(0x3000, 0x100, probe()).unwrap();
        assert!(matches!(
            bus.relocate(0x1000, 0x2f80),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.contains(0x1000), "unchanged after a refused move");
        // Moving onto part of its own old range is fine.
        bus.relocate(0x1000, 0x1080).unwrap();
        assert!(!bus.contains(0x1000));
        assert!(bus.contains(0x1080));
        assert!(matches!(
            bus.relocate(0x5000, 0x6000),
            Err(BusError::NotFound { .. })
        ));
        bus.remove(0x1080).unwrap();
        assert!(!bus.contains(0x1080));
    }
}
