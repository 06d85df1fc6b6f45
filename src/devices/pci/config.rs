// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Type-0 configuration space: registers with read-only masks, BAR sizing and moves, the capability list.
//!
//! The space is 256 bytes plus two masks per byte: `wmask` (bits the guest may
//! change) and `w1cmask` (bits a guest write of 1 clears). Every access,
//! whatever its width or offset, goes byte by byte through those masks, so a
//! word write that covers two fields treats each with its own rules.
//!
//! Nothing here does I/O. A write returns the [`ConfigChange`]s it caused (a
//! BAR moved, memory decode switched, a capability was written) and the
//! owner of the device acts on them: moving memslots, rebuilding routes.

use thiserror::Error;

use super::malformed_access;

/// Size of a conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Offset of the first capability; 0x00..0x40 is the standard header.
pub const FIRST_CAPABILITY: u8 = 0x40;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS_PROG_IF: usize = 0x09;
const CACHE_LINE_SIZE: usize = 0x0c;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAPABILITY_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const BAR_COUNT: usize = 6;

/// Command bits a guest may change: I/O space, memory space, bus master,
/// parity error response, SERR# enable, interrupt disable. The rest of the
/// register (special cycles, MWI, VGA snoop, stepping, fast back-to-back)
/// is hard-wired to 0, as on a modern device.
pub const COMMAND_WRITABLE: u16 = 0x0001 | 0x0002 | 0x0004 | 0x0040 | 0x0100 | 0x0400;
/// Command register: memory space decode.
pub const COMMAND_MEMORY: u16 = 0x0002;
/// Status register: a capability list is present.
pub const STATUS_CAP_LIST: u16 = 0x0010;
/// Status bits that are cleared by writing 1: master data parity error,
/// signalled/received target abort, received master abort, signalled
/// system error, detected parity error.
pub const STATUS_W1C: u16 = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000;

const BAR_MEM64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;
const BAR_FLAGS: u64 = 0xf;

/// The identity registers of a function; all are read-only to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// 24 bits: `class << 16 | subclass << 8 | prog_if`.
    pub class: u32,
    pub subsys_vendor: u16,
    pub subsys_id: u16,
    pub header_type: u8,
}

/// What a memory BAR decodes. There are no I/O BARs: ivshmem has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

impl BarKind {
    fn flags(self) -> u32 {
        let (prefetchable, wide) = match self {
            BarKind::Mem32 { prefetchable } => (prefetchable, 0),
            BarKind::Mem64 { prefetchable } => (prefetchable, BAR_MEM64),
        };
        wide | if prefetchable { BAR_PREFETCHABLE } else { 0 }
    }

    fn is_64(self) -> bool {
        matches!(self, BarKind::Mem64 { .. })
    }
}

/// A BAR as currently programmed by the guest (or as built, before that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub addr: u64,
    pub size: u64,
    pub kind: BarKind,
}

/// Something a configuration write changed that its owner must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// The decoded address of BAR `index` changed. Reported for every change,
    /// including the transient halves of a 64-bit update and sizing probes,
    /// and whether or not memory decode is on: the owner checks the address
    /// against its windows and decides whether to map it.
    BarMoved { index: usize, old: u64, new: u64 },
    /// The command register's memory-space bit changed to this value.
    MemoryDecode(bool),
    /// A write touched the capability at `cap_offset`; `offset`/`size` are
    /// the part of the access inside that capability (absolute offsets).
    Capability {
        cap_offset: u8,
        offset: u16,
        size: u8,
    },
}

/// Why a BAR or capability could not be added; these are VMM bugs or bad
/// device parameters, found when the device is built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR index {index} is out of range: a type-0 header has BARs 0..=5 and a 64-bit BAR needs index+1 too")]
    BarIndex { index: usize },
    #[error("BAR {index} is already in use; give each BAR its own index")]
    BarInUse { index: usize },
    #[error("BAR {index} size {size:#x} is not a power of two of at least 16 bytes (at most 2 GiB for a 32-bit BAR)")]
    BarSize { index: usize, size: u64 },
    #[error("BAR {index} address {addr:#x} is not aligned to its size {size:#x} or does not fit the BAR; pick a naturally aligned address")]
    BarAddress { index: usize, addr: u64, size: u64 },
    #[error("capability {id:#04x} has a {body}-byte body but a {wmask}-byte write mask; give one mask byte per body byte")]
    CapabilityMask { id: u8, body: usize, wmask: usize },
    #[error("capability {id:#04x} ({len} bytes) does not fit in the 256-byte configuration space; drop or shrink a capability")]
    CapabilitySpace { id: u8, len: usize },
}

#[derive(Clone, Copy, Debug)]
struct BarSlot {
    size: u64,
    kind: BarKind,
}

#[derive(Clone, Copy, Debug)]
struct CapabilitySlot {
    offset: u8,
    /// Header (id, next) included.
    len: u8,
}

/// A type-0 configuration space.
#[derive(Clone, Debug)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    w1cmask: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarSlot>; BAR_COUNT],
    capabilities: Vec<CapabilitySlot>,
}

impl PciConfig {
    pub fn new(ids: PciIds) -> Self {
        let mut config = PciConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1cmask: [0; CONFIG_SPACE_SIZE],
            bars: [None; BAR_COUNT],
            capabilities: Vec::new(),
        };
        config.init_u16(0x00, ids.vendor);
        config.init_u16(0x02, ids.device);
        config.init(REVISION, &[ids.revision]);
        config.init(CLASS_PROG_IF, &ids.class.to_le_bytes()[..3]);
        config.init(HEADER_TYPE, &[ids.header_type]);
        config.init_u16(SUBSYSTEM_VENDOR, ids.subsys_vendor);
        config.init_u16(SUBSYSTEM_ID, ids.subsys_id);
        config.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        config.w1cmask[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        // Linux sets the cache line size and reads it back; the interrupt
        // line is scratch space for the OS. The interrupt pin stays 0: our
        // devices have no INTx, only MSI-X.
        config.wmask[CACHE_LINE_SIZE] = 0xff;
        config.wmask[INTERRUPT_LINE] = 0xff;
        config
    }

    /// Declares BAR `index` (and `index + 1` for a 64-bit BAR) with its
    /// size and initial address. Call while building the device.
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        addr: u64,
    ) -> Result<(), ConfigError> {
        let slots = if kind.is_64() { 2 } else { 1 };
        if index.checked_add(slots).is_none_or(|end| end > BAR_COUNT) {
            return Err(ConfigError::BarIndex { index });
        }
        if let Some(used) = (index..index + slots).find(|&i| self.register_is_bar(i)) {
            return Err(ConfigError::BarInUse { index: used });
        }
        let max_size = if kind.is_64() { 1 << 63 } else { 1 << 31 };
        if !size.is_power_of_two() || !(16..=max_size).contains(&size) {
            return Err(ConfigError::BarSize { index, size });
        }
        let limit = if kind.is_64() {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if addr & (size - 1) != 0 || addr > limit - (size - 1) {
            return Err(ConfigError::BarAddress { index, addr, size });
        }
        let value = addr | u64::from(kind.flags());
        let wmask = !(size - 1) & !BAR_FLAGS;
        let reg = BAR0 + 4 * index;
        let width = 4 * slots;
        self.init(reg, &value.to_le_bytes()[..width]);
        self.wmask[reg..reg + width].copy_from_slice(&wmask.to_le_bytes()[..width]);
        self.bars[index] = Some(BarSlot { size, kind });
        Ok(())
    }

    /// Appends a capability: `body` is everything after the two header bytes
    /// (id, next pointer), `wmask` its per-byte writable mask. Returns the
    /// capability's offset. The list starts at 0x40 and is kept in the
    /// order capabilities are added, each dword aligned.
    pub fn add_capability(&mut self, id: u8, body: &[u8], wmask: &[u8]) -> Result<u8, ConfigError> {
        if body.len() != wmask.len() {
            return Err(ConfigError::CapabilityMask {
                id,
                body: body.len(),
                wmask: wmask.len(),
            });
        }
        let len = body.len() + 2;
        let start = match self.capabilities.last() {
            Some(last) => (usize::from(last.offset) + usize::from(last.len) + 3) & !3,
            None => usize::from(FIRST_CAPABILITY),
        };
        if start + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpace { id, len });
        }
        // Both fit in a byte: start + len <= 256 and start >= 0x40.
        let (offset, len_u8) = (start as u8, len as u8);
        self.init(start, &[id, 0]);
        self.init(start + 2, body);
        self.wmask[start + 2..start + len].copy_from_slice(wmask);
        let link = match self.capabilities.last() {
            Some(last) => usize::from(last.offset) + 1,
            None => CAPABILITY_POINTER,
        };
        self.init(link, &[offset]);
        let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
        self.init_u16(STATUS, status);
        self.capabilities.push(CapabilitySlot {
            offset,
            len: len_u8,
        });
        Ok(offset)
    }

    /// Reads `size` (1, 2 or 4) bytes at `offset`, little-endian. Offsets
    /// 256..4096 (extended space, which a conventional function does not
    /// have) read 0; a width other than 1/2/4, an access that crosses a
    /// dword or one beyond 4 KiB reads all-ones, like an access no device
    /// claims.
    pub fn read(&self, offset: u16, size: u8) -> u32 {
        if !access_is_valid(offset, size) {
            malformed_access(format_args!("config read at {offset:#x} size {size}"));
            return u32::MAX;
        }
        let start = usize::from(offset);
        if start >= CONFIG_SPACE_SIZE {
            return 0;
        }
        let mut value = [0u8; 4];
        value[..usize::from(size)].copy_from_slice(&self.bytes[start..start + usize::from(size)]);
        u32::from_le_bytes(value)
    }

    /// Writes the low `size` bytes of `value` at `offset` through the masks
    /// and returns what changed. Invalid accesses (see [`PciConfig::read`])
    /// and extended-space writes are ignored.
    pub fn write(&mut self, offset: u16, size: u8, value: u32) -> Vec<ConfigChange> {
        if !access_is_valid(offset, size) {
            malformed_access(format_args!("config write at {offset:#x} size {size}"));
            return Vec::new();
        }
        let start = usize::from(offset);
        if start >= CONFIG_SPACE_SIZE {
            return Vec::new();
        }
        let end = start + usize::from(size);
        let bars_before = self.bar_addresses();
        let memory_before = self.memory_enabled();
        for (i, byte) in (start..end).zip(value.to_le_bytes()) {
            let kept = self.bytes[i] & !self.wmask[i];
            let written = byte & self.wmask[i];
            self.bytes[i] = (kept | written) & !(byte & self.w1cmask[i]);
        }
        let mut changes = Vec::new();
        let bars_after = self.bar_addresses();
        for (index, (old, new)) in bars_before.into_iter().zip(bars_after).enumerate() {
            if let (Some(old), Some(new)) = (old, new) {
                if old != new {
                    changes.push(ConfigChange::BarMoved { index, old, new });
                }
            }
        }
        let memory_after = self.memory_enabled();
        if memory_after != memory_before {
            changes.push(ConfigChange::MemoryDecode(memory_after));
        }
        for cap in &self.capabilities {
            let cap_start = usize::from(cap.offset);
            let cap_end = cap_start + usize::from(cap.len);
            let (lo, hi) = (start.max(cap_start), end.min(cap_end));
            if lo < hi {
                changes.push(ConfigChange::Capability {
                    cap_offset: cap.offset,
                    // lo < 256 and hi - lo <= 4.
                    offset: lo as u16,
                    size: (hi - lo) as u8,
                });
            }
        }
        changes
    }

    /// BAR `index` as currently programmed; `None` for an unused BAR and for
    /// the upper half of a 64-bit BAR.
    pub fn bar(&self, index: usize) -> Option<Bar> {
        let slot = (*self.bars.get(index)?)?;
        Some(Bar {
            addr: self.bar_address(index, slot),
            size: slot.size,
            kind: slot.kind,
        })
    }

    /// Sets the command register the function starts with (e.g. memory
    /// decode on for BARs the VMM pre-assigned, as firmware would leave
    /// them). Only writable bits are taken.
    pub fn set_initial_command(&mut self, value: u16) {
        self.init_u16(COMMAND, value & COMMAND_WRITABLE);
    }

    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    fn register_is_bar(&self, reg: usize) -> bool {
        (0..=reg).any(|i| match self.bars[i] {
            Some(slot) => i == reg || (slot.kind.is_64() && i + 1 == reg),
            None => false,
        })
    }

    fn bar_address(&self, index: usize, slot: BarSlot) -> u64 {
        let reg = BAR0 + 4 * index;
        let low = u64::from(self.u32_at(reg));
        let high = if slot.kind.is_64() {
            u64::from(self.u32_at(reg + 4))
        } else {
            0
        };
        (high << 32 | low) & !BAR_FLAGS
    }

    fn bar_addresses(&self) -> [Option<u64>; BAR_COUNT] {
        let mut addrs = [None; BAR_COUNT];
        for (index, addr) in addrs.iter_mut().enumerate() {
            *addr = self.bars[index].map(|slot| self.bar_address(index, slot));
        }
        addrs
    }

    /// Sets bytes of the space as built.
    fn init(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }

    fn init_u16(&mut self, offset: usize, value: u16) {
        self.init(offset, &value.to_le_bytes());
    }

    fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    fn u32_at(&self, offset: usize) -> u32 {
        let b = &self.bytes[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

/// PCI accesses are a dword with byte enables: 1, 2 or 4 bytes that stay
/// inside one dword. Offsets up to 4 KiB (extended space) are accepted.
fn access_is_valid(offset: u16, size: u8) -> bool {
    matches!(size, 1 | 2 | 4) && usize::from(offset % 4) + usize::from(size) <= 4 && offset < 4096
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
