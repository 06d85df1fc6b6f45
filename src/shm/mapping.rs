// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A `MAP_SHARED` read/write mapping of a shared-memory object.
//!
//! Other processes (peers, guests) write the same memory at any time, so every
//! access here is volatile or atomic and bounds-checked; nothing assumes the
//! contents stay put between two reads.

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::errno::Errno;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

/// A shared mapping of exactly `len` bytes; unmapped on drop.
#[derive(Debug)]
pub struct ShmMapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is not
// tied to the creating thread, and every accessor uses volatile or atomic
// operations that tolerate concurrent writers (which exist anyway: peers).
unsafe impl Send for ShmMapping {}
// SAFETY: as above; `&self` accessors never hand out references into the
// mapping, only copies, so shared use from several threads is sound.
unsafe impl Sync for ShmMapping {}

impl ShmMapping {
    /// Maps `len` bytes of `fd` from offset 0, shared and read/write.
    pub(super) fn new(fd: BorrowedFd<'_>, len: u64) -> Result<Self, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::ENOMEM)?;
        let nz = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a fresh mapping at an address the kernel picks cannot alias
        // any Rust object; the fd is valid for the duration of the call.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        Ok(ShmMapping {
            addr: ptr.cast(),
            len,
        })
    }

    /// The host virtual address of the first byte (for a KVM memory slot).
    pub fn host_addr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: an empty mapping cannot be created.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, count: usize) -> Option<*mut u8> {
        let end = offset.checked_add(count)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + count ≤ len, so the result stays inside the mapping.
        Some(unsafe { self.addr.as_ptr().add(offset) })
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`; `None` if out of range.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Option<()> {
        let src = self.check(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: src + i is inside the mapping (checked above); volatile
            // because another process may write it concurrently.
            *b = unsafe { src.add(i).read_volatile() };
        }
        Some(())
    }

    /// Copies `buf` to `offset`; `None` if out of range.
    pub fn write(&self, offset: usize, buf: &[u8]) -> Option<()> {
        let dst = self.check(offset, buf.len())?;
        for (i, b) in buf.iter().enumerate() {
            // SAFETY: dst + i is inside the mapping (checked above).
            unsafe { dst.add(i).write_volatile(*b) };
        }
        Some(())
    }

    fn atomic_u32(&self, offset: usize) -> Option<&AtomicU32> {
        if offset % 4 != 0 {
            return None;
        }
        let p = self.check(offset, 4)?;
        // SAFETY: p is 4-byte aligned (the mapping is page aligned and offset
        // is a multiple of 4), inside the mapping, and lives as long as
        // `self`; all our accesses to it are atomic.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// Reads the little-endian u32 at `offset` (4-byte aligned) atomically.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        self.atomic_u32(offset)
            .map(|a| u32::from_le(a.load(Ordering::SeqCst)))
    }

    /// Writes `value` little-endian at `offset` (4-byte aligned) atomically.
    pub fn write_u32(&self, offset: usize, value: u32) -> Option<()> {
        self.atomic_u32(offset)
            .map(|a| a.store(value.to_le(), Ordering::SeqCst))
    }
}

impl Drop for ShmMapping {
    fn drop(&mut self) {
        // SAFETY: addr/len describe exactly the mapping created in `new`, and
        // no reference into it outlives `self` (accessors copy).
        if let Err(e) = unsafe { munmap(self.addr.cast(), self.len) } {
            log::warn!("munmap of shared memory failed: {e}");
        }
    }
}
