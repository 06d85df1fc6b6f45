// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver's character device (`/dev/ivshmemN`): info, doorbells, event
//! waits and the BAR2 mapping. The ABI is guest/driver/ivshmem.h.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::Error;

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
const IVSHMEM_IOC_MAGIC: u64 = 0xE7;

/// Linux's `_IOC(dir, type, nr, size)` for x86_64.
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (IVSHMEM_IOC_MAGIC << 8) | nr
}

#[repr(C)]
#[derive(Default)]
struct RawInfo {
    size: u64,
    position: i32,
    vectors: u32,
    cache: u32,
    reserved: u32,
}

#[repr(C)]
struct RawRing {
    peer: u16,
    vector: u16,
    reserved: u32,
}

#[repr(C)]
struct RawWait {
    vector: u32,
    timeout_ms: i32,
    count: u64,
}

#[repr(C)]
struct RawNotify {
    vector: i32,
    flags: u32,
    count: u64,
}

pub const IOC_INFO: u64 = ioc(IOC_READ, 0, std::mem::size_of::<RawInfo>());
pub const IOC_RING: u64 = ioc(IOC_WRITE, 1, std::mem::size_of::<RawRing>());
pub const IOC_WAIT: u64 = ioc(IOC_READ | IOC_WRITE, 2, std::mem::size_of::<RawWait>());
pub const IOC_NOTIFY: u64 = ioc(IOC_READ | IOC_WRITE, 3, std::mem::size_of::<RawNotify>());

/// What the driver reports about one device.
#[derive(Debug, Clone, Copy)]
pub struct Info {
    pub size: u64,
    pub position: i32,
    pub vectors: u32,
    pub cache: Cache,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    WriteBack,
    WriteCombining,
    Uncached,
    UncachedMinus,
    WriteThrough,
    WriteProtected,
    Unknown(u32),
}

impl Cache {
    fn from_raw(v: u32) -> Self {
        match v {
            0 => Cache::WriteBack,
            1 => Cache::WriteCombining,
            2 => Cache::Uncached,
            3 => Cache::UncachedMinus,
            4 => Cache::WriteThrough,
            5 => Cache::WriteProtected,
            other => Cache::Unknown(other),
        }
    }
}

impl std::fmt::Display for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cache::WriteBack => write!(f, "write-back"),
            Cache::WriteCombining => write!(f, "write-combining"),
            Cache::Uncached => write!(f, "uncached"),
            Cache::UncachedMinus => write!(f, "uncached-minus"),
            Cache::WriteThrough => write!(f, "write-through"),
            Cache::WriteProtected => write!(f, "write-protected"),
            Cache::Unknown(v) => write!(f, "unknown({v})"),
        }
    }
}

/// Result of a wait on one vector's event count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The count moved; this is the new one.
    Event(u64),
    /// Nothing happened before the timeout; this is the (unchanged) count.
    Timeout(u64),
}

pub struct Device {
    file: File,
    path: String,
}

impl Device {
    pub fn open(path: &str) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::Open(path.to_string(), e))?;
        Ok(Device {
            file,
            path: path.to_string(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn ioctl<T>(&self, req: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a live, exclusively borrowed #[repr(C)] struct of
        // exactly the size encoded in `req`; the driver reads/writes only it.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn info(&self) -> Result<Info, Error> {
        let mut raw = RawInfo::default();
        self.ioctl(IOC_INFO, &mut raw)
            .map_err(|e| Error::Ioctl("info", self.path.clone(), e))?;
        Ok(Info {
            size: raw.size,
            position: raw.position,
            vectors: raw.vectors,
            cache: Cache::from_raw(raw.cache),
        })
    }

    /// Interrupt `vector` of peer `peer` (the Doorbell register).
    pub fn ring(&self, peer: u16, vector: u16) -> Result<(), Error> {
        let mut raw = RawRing {
            peer,
            vector,
            reserved: 0,
        };
        self.ioctl(IOC_RING, &mut raw)
            .map_err(|e| Error::Ioctl("ring", self.path.clone(), e))
    }

    /// Block until `vector`'s count differs from `seen` (timeout_ms < 0:
    /// forever; 0: just report the current count).
    pub fn wait(&self, vector: u32, seen: u64, timeout_ms: i32) -> Result<Wait, Error> {
        let mut raw = RawWait {
            vector,
            timeout_ms,
            count: seen,
        };
        match self.ioctl(IOC_WAIT, &mut raw) {
            Ok(()) => Ok(Wait::Event(raw.count)),
            Err(e) if e.raw_os_error() == Some(libc::ETIMEDOUT) => Ok(Wait::Timeout(raw.count)),
            Err(e) => Err(Error::Ioctl("wait", self.path.clone(), e)),
        }
    }

    /// Subscribe this file to peer/link change events (IVSHMEM_IOC_NOTIFY):
    /// `vector` -1 lets the driver choose. Returns the vector notifications
    /// arrive on; from now on `read_counts` has one more count, the
    /// change count, after the vectors' (and poll sees it).
    pub fn notify(&self, vector: i32) -> Result<i32, Error> {
        let mut raw = RawNotify {
            vector,
            flags: 0,
            count: 0,
        };
        self.ioctl(IOC_NOTIFY, &mut raw)
            .map_err(|e| Error::Ioctl("notify", self.path.clone(), e))?;
        Ok(raw.vector)
    }

    /// The current event count of `vector`.
    pub fn count(&self, vector: u32) -> Result<u64, Error> {
        match self.wait(vector, u64::MAX, 0)? {
            Wait::Event(c) | Wait::Timeout(c) => Ok(c),
        }
    }

    /// The event counts (one per vector) once any changed since this
    /// file's last read; blocks unless nothing is left to wait for.
    pub fn read_counts(&self, counts: &mut [u64]) -> Result<usize, Error> {
        let bytes = std::mem::size_of_val(counts);
        // SAFETY: `counts` is a live, writable buffer of exactly `bytes`.
        let n = unsafe { libc::read(self.file.as_raw_fd(), counts.as_mut_ptr().cast(), bytes) };
        if n < 0 {
            return Err(Error::Read(self.path.clone(), io::Error::last_os_error()));
        }
        Ok(n as usize / 8)
    }

    pub fn raw_fd(&self) -> std::os::unix::io::RawFd {
        self.file.as_raw_fd()
    }

    /// Map `len` bytes of BAR2 from offset 0, shared.
    pub fn map(&self, len: u64) -> Result<Shm, Error> {
        let len_usize = usize::try_from(len).map_err(|_| Error::TooBig(len))?;
        // SAFETY: a fresh shared mapping chosen by the kernel; nothing else
        // in this process refers to that address range yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Mmap(self.path.clone(), io::Error::last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(Error::TooBig(len))?;
        Ok(Shm {
            ptr,
            len: len_usize,
        })
    }
}

/// A mapping of BAR2. All accesses are bounds-checked by the callers'
/// offsets through `word`, and go through volatile or atomic operations,
/// since another VM or the host changes this memory behind our back.
pub struct Shm {
    ptr: NonNull<u8>,
    len: usize,
}

impl Shm {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// A pointer to the naturally aligned `width`-byte item at `off`.
    fn item(&self, off: u64, width: usize) -> Result<*mut u8, Error> {
        let off_usize = usize::try_from(off).map_err(|_| Error::OutOfRange(off))?;
        if off_usize % width != 0
            || off_usize
                .checked_add(width)
                .is_none_or(|end| end > self.len)
        {
            return Err(Error::OutOfRange(off));
        }
        // SAFETY: off + width <= len, so the result stays inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(off_usize) })
    }

    fn word(&self, off: u64) -> Result<*mut u64, Error> {
        Ok(self.item(off, 8)?.cast::<u64>())
    }

    pub fn read(&self, off: u64) -> Result<u64, Error> {
        let p = self.word(off)?;
        // SAFETY: `p` is an aligned, in-bounds word of our live mapping.
        Ok(unsafe { p.read_volatile() })
    }

    pub fn write(&self, off: u64, value: u64) -> Result<(), Error> {
        let p = self.word(off)?;
        // SAFETY: `p` is an aligned, in-bounds word of our live mapping.
        unsafe { p.write_volatile(value) };
        Ok(())
    }

    /// An atomic view of the word at `off` (flags shared with peers).
    pub fn atomic(&self, off: u64) -> Result<&AtomicU64, Error> {
        let p = self.word(off)?;
        // SAFETY: aligned, in bounds, valid for the lifetime of &self;
        // AtomicU64 has the layout of u64 and all its accesses are atomic.
        Ok(unsafe { &*(p as *const AtomicU64) })
    }

    /// An atomic view of the 32-bit word at `off` (4-byte aligned).
    pub fn atomic32(&self, off: u64) -> Result<&AtomicU32, Error> {
        let p = self.item(off, 4)?;
        // SAFETY: aligned, in bounds, valid for the lifetime of &self;
        // AtomicU32 has the layout of u32 and all its accesses are atomic.
        Ok(unsafe { &*(p as *const AtomicU32) })
    }

    /// Anonymous shared memory standing in for BAR2 in unit tests.
    #[cfg(test)]
    pub fn anonymous(len: usize) -> Shm {
        // SAFETY: a fresh anonymous mapping chosen by the kernel.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "anonymous mmap of {len} bytes");
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap never returns null");
        Shm { ptr, len }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; no reference into it outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_c_header() {
        // _IOR(0xE7, 0, 24 bytes), _IOW(0xE7, 1, 8), _IOWR(0xE7, 2, 16),
        // _IOWR(0xE7, 3, 16)
        assert_eq!(IOC_INFO, 0x8018_E700);
        assert_eq!(IOC_RING, 0x4008_E701);
        assert_eq!(IOC_WAIT, 0xC010_E702);
        assert_eq!(IOC_NOTIFY, 0xC010_E703);
    }

    #[test]
    fn shm_accesses_are_aligned_and_in_bounds() {
        let shm = Shm::anonymous(4096);
        shm.atomic32(4092)
            .unwrap()
            .store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(shm.read(4088).unwrap(), 7 << 32);
        assert!(matches!(shm.atomic32(4096), Err(Error::OutOfRange(4096))));
        assert!(matches!(shm.atomic32(2), Err(Error::OutOfRange(2))));
        assert!(matches!(shm.atomic(4092), Err(Error::OutOfRange(4092))));
        assert!(matches!(shm.read(u64::MAX - 7), Err(Error::OutOfRange(_))));
    }

    #[test]
    fn cache_names_follow_the_driver() {
        assert_eq!(Cache::from_raw(0).to_string(), "write-back");
        assert_eq!(Cache::from_raw(2), Cache::Uncached);
        assert_eq!(Cache::from_raw(3).to_string(), "uncached-minus");
        assert_eq!(Cache::from_raw(9), Cache::Unknown(9));
    }
}
