// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A `MAP_SHARED` read/write mapping of a shared-memory object.
//!
//! Other processes (peers, guests) write the same memory at any time, so every
//! access here is volatile or atomic and bounds-checked; nothing assumes the
//! contents stay put between two reads.

use std::fs::File;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder, MmapRegionError};
use vm_memory::{Bytes, FileOffset, VolatileMemory, VolatileSlice};

/// A shared mapping of exactly `len` bytes; unmapped on drop. vm-memory's
/// [`MmapRegion`] owns the mapping (and a duplicate of the fd); every access
/// goes through its bounds-checked volatile and atomic accessors.
#[derive(Debug)]
pub struct ShmMapping {
    region: MmapRegion<()>,
    /// Our slot in the truncation handler's registry (see truncation.rs).
    repair_slot: Option<usize>,
}

impl ShmMapping {
    /// Maps `len` bytes of `file` from offset 0, shared and read/write —
    /// without MAP_NORESERVE, so that on hugetlbfs a lack of huge pages is
    /// an error now rather than a SIGBUS when the guest touches the memory.
    pub(super) fn new(file: &File, len: u64) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::ENOMEM)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let file = file.try_clone().map_err(errno_of)?;
        let region = MmapRegionBuilder::new(len)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .map_err(|e| match e {
                MmapRegionError::Mmap(io) => errno_of(io),
                MmapRegionError::MappingPastEof => Errno::EINVAL,
                _ => Errno::EINVAL,
            })?;
        let repair_slot = super::truncation::register(region.as_ptr() as usize, len);
        Ok(ShmMapping {
            region,
            repair_slot,
        })
    }

    fn slice(&self) -> VolatileSlice<'_> {
        self.region.as_volatile_slice()
    }

    /// The host virtual address of the first byte (for a KVM memory slot).
    pub fn host_addr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.region.len()
    }

    /// Never true: an empty mapping cannot be created.
    pub fn is_empty(&self) -> bool {
        self.region.len() == 0
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; `None` if out of range.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Option<()> {
        self.slice().read_slice(buf, offset).ok()
    }

    /// Copies `buf` to `offset`; `None` if out of range.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Option<()> {
        self.slice().write_slice(buf, offset).ok()
    }

    /// Reads the little-endian u32 at `offset` (4-byte aligned) atomically.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let value: u32 = self.slice().load(offset, Ordering::SeqCst).ok()?;
        Some(u32::from_le(value))
    }

    /// Writes `value` little-endian at `offset` (4-byte aligned) atomically.
    pub fn write_u32(&self, offset: usize, value: u32) -> Option<()> {
        self.slice()
            .store(value.to_le(), offset, Ordering::SeqCst)
            .ok()
    }
}

fn errno_of(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL))
}

impl Drop for ShmMapping {
    fn drop(&mut self) {
        // Before MmapRegion unmaps: the handler must not repair a range
        // that is about to be someone else's.
        if let Some(slot) = self.repair_slot {
            super::truncation::unregister(slot);
        }
    }
}
