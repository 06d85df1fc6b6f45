// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Bus 0: the host bridge at 00:00.0 and CONFIG_ADDRESS/CONFIG_DATA at 0xcf8/0xcfc.
//!
//! Configuration mechanism #1: a dword write to 0xcf8 latches
//! CONFIG_ADDRESS (enable bit 31, bus 23:16, device 15:11, function 10:8,
//! register 7:2); accesses to 0xcfc..0xcff then reach register
//! `(address & 0xfc) + (port - 0xcfc)` of that function. Only bus 0 exists,
//! each slot holds one function (function 0), and the host bridge sits in
//! slot 0 so that Linux's type-1 sanity check (it looks for a host-bridge
//! class on bus 0) succeeds.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::config::{PciConfig, PciIds};
use super::malformed_access;
use crate::bus::BusDevice;

/// First port of CONFIG_ADDRESS; register the root on the PIO bus here.
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// CONFIG_ADDRESS (4 ports) and CONFIG_DATA (4 ports).
pub const CONFIG_PORTS_LEN: u64 = 8;
/// Slots on bus 0; slot 0 is the host bridge.
pub const SLOTS: usize = 32;

/// The host bridge's identity: QEMU's generic PCIe host bridge ids (Red Hat
/// 1b36:0008), class 06/00/00, so guests see a familiar, driverless bridge.
pub const HOST_BRIDGE_IDS: PciIds = PciIds {
    vendor: 0x1b36,
    device: 0x0008,
    revision: 0,
    class: 0x06_00_00,
    subsys_vendor: 0,
    subsys_id: 0,
    header_type: 0,
};

const ENABLE: u32 = 1 << 31;
const DATA_OFFSET: u64 = 4;

/// A function's configuration space as the root complex reaches it.
/// `offset` is 0..256, `size` 1/2/4, and the access stays in one dword.
pub trait PciFunction: Send {
    fn config_read(&mut self, offset: u16, size: u8) -> u32;
    fn config_write(&mut self, offset: u16, size: u8, value: u32);
}

/// A function as the root holds it.
pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RootError {
    #[error("PCI bus 0 is full: at most 31 devices fit beside the host bridge; use fewer devices")]
    Full,
}

/// 00:00.0: a host bridge with no BARs and nothing to react to.
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        HostBridge {
            config: PciConfig::new(HOST_BRIDGE_IDS),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        // The bridge has no BARs or capabilities; the command bits it keeps
        // have no effect on anything we emulate.
        self.config.write(offset, size, value);
    }
}

/// Bus 0 with its CONFIG_ADDRESS latch.
pub struct PciRoot {
    config_address: u32,
    slots: [Option<SharedFunction>; SLOTS],
}

impl PciRoot {
    /// A bus with the host bridge at 00:00.0 and 31 empty slots.
    pub fn new() -> Self {
        let mut slots: [Option<SharedFunction>; SLOTS] = Default::default();
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::new())));
        PciRoot {
            config_address: 0,
            slots,
        }
    }

    /// Puts `f` in the lowest free slot and returns its device number.
    pub fn add_function(&mut self, f: SharedFunction) -> Result<u8, RootError> {
        let (device, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.is_none())
            .ok_or(RootError::Full)?;
        *slot = Some(f);
        // device < SLOTS = 32.
        Ok(device as u8)
    }

    /// The function at `00:device.0`, if any.
    pub fn function(&self, device: u8) -> Option<SharedFunction> {
        self.slots.get(usize::from(device))?.clone()
    }

    /// The function CONFIG_ADDRESS selects and the dword register in it,
    /// or `None` when the access must read all-ones: enable clear, a bus
    /// other than 0, a function other than 0, or an empty slot.
    fn selected(&self) -> Option<(SharedFunction, u16)> {
        let a = self.config_address;
        let bus = (a >> 16) & 0xff;
        let device = (a >> 11) & 0x1f;
        let function = (a >> 8) & 0x7;
        if a & ENABLE == 0 || bus != 0 || function != 0 {
            return None;
        }
        let f = self.slots[device as usize].clone()?;
        Some((f, (a & 0xfc) as u16))
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

/// CONFIG_DATA accesses: 1, 2 or 4 bytes that stay inside 0xcfc..0xcff.
fn data_access(offset: u64, len: usize) -> Option<u8> {
    let within = offset.checked_sub(DATA_OFFSET)?;
    let ok = matches!(len, 1 | 2 | 4) && within + len as u64 <= 4;
    // len <= 4 here.
    ok.then_some(len as u8)
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset < DATA_OFFSET {
            // Reads of CONFIG_ADDRESS return the latch, at any width that
            // stays inside it.
            let start = offset as usize;
            match self
                .config_address
                .to_le_bytes()
                .get(start..start + data.len())
            {
                Some(bytes) => data.copy_from_slice(bytes),
                None => malformed_access(format_args!(
                    "CONFIG_ADDRESS read at +{offset} size {}",
                    data.len()
                )),
            }
            return;
        }
        let Some(size) = data_access(offset, data.len()) else {
            malformed_access(format_args!(
                "CONFIG_DATA read at +{offset} size {}",
                data.len()
            ));
            return;
        };
        let Some((f, reg)) = self.selected() else {
            return;
        };
        let value = f
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_read(reg + (offset - DATA_OFFSET) as u16, size);
        data.copy_from_slice(&value.to_le_bytes()[..data.len()]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < DATA_OFFSET {
            // Only a dword write latches; Linux's type-1 probe pokes a byte
            // at 0xcfb and expects nothing to happen.
            if let (0, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
                self.config_address = u32::from_le_bytes(bytes);
            }
            return;
        }
        let Some(size) = data_access(offset, data.len()) else {
            malformed_access(format_args!(
                "CONFIG_DATA write at +{offset} size {}",
                data.len()
            ));
            return;
        };
        let Some((f, reg)) = self.selected() else {
            return;
        };
        let mut value = [0u8; 4];
        value[..data.len()].copy_from_slice(data);
        f.lock().unwrap_or_else(|e| e.into_inner()).config_write(
            reg + (offset - DATA_OFFSET) as u16,
            size,
            u32::from_le_bytes(value),
        );
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
