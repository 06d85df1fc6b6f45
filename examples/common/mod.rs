// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Helpers shared by the benchmark examples (included with `mod common;`):
//! the TSC rate, summaries of samples, and the floors' guest RAM.
//!
//! Each example uses a different part of this file.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The time-stamp counter. Guests read the same counter (KVM does not scale
/// it on this host), so host and guest cycles are the same unit.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter; it touches no memory
    // and every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// TSC ticks per microsecond, measured against CLOCK_MONOTONIC over `ms`.
pub fn tsc_per_us(ms: u64) -> f64 {
    let (t0, c0) = (Instant::now(), rdtsc());
    std::thread::sleep(Duration::from_millis(ms));
    let (c1, elapsed) = (rdtsc(), t0.elapsed());
    (c1 - c0) as f64 / (elapsed.as_nanos() as f64 / 1000.0)
}

/// Order statistics of a sample set (the value at rank ⌊n·p/100⌋ of the
/// sorted samples, as the test guest computes them).
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    /// None for an empty set.
    pub fn of(samples: &[u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_unstable();
        let n = v.len();
        let at = |p: usize| v[(n * p / 100).min(n - 1)];
        Some(Summary {
            n,
            min: v[0],
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: v[n - 1],
        })
    }
}

/// Writes one sample per line.
pub fn write_samples(path: &std::path::Path, samples: &[u64]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for s in samples {
        writeln!(out, "{s}")?;
    }
    out.flush()
}

/// Anonymous guest RAM at guest-physical 0, for the bare-KVM floors.
pub struct GuestRam {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; the host writes
// it only before the vCPU starts and reads it (volatile counter reads while
// running, samples after it has stopped).
unsafe impl Send for GuestRam {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// `len` bytes, mapped private and anonymous with `flags` added
    /// (MAP_POPULATE, MAP_NORESERVE...).
    pub fn new(len: usize, flags: libc::c_int) -> std::io::Result<GuestRam> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(GuestRam {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        assert!(start + bytes.len() <= self.len, "layout bug: {gpa:#x}");
        // SAFETY: bounds checked above; the mapping is ours and writable.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len()) }
    }

    pub fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }

    /// Where the memory is in this process (for KVM's memory slot).
    pub fn host_addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn read_u32(&self, gpa: u64) -> u32 {
        let start = gpa as usize;
        assert!(start + 4 <= self.len, "layout bug: {gpa:#x}");
        let mut b = [0u8; 4];
        // SAFETY: bounds checked above; the vCPU has stopped.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), b.as_mut_ptr(), 4) }
        u32::from_le_bytes(b)
    }

    /// The aligned u32 at `gpa`, read while a vCPU may be writing it.
    pub fn read_u32_volatile(&self, gpa: u64) -> u32 {
        let start = gpa as usize;
        assert!(
            start + 4 <= self.len && start % 4 == 0,
            "layout bug: {gpa:#x}"
        );
        // SAFETY: in bounds and aligned (checked), and a racy read of a u32
        // the guest bumps is fine: volatile keeps it a real load.
        unsafe { std::ptr::read_volatile(self.ptr.add(start).cast::<u32>()) }
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); the VM using it
        // is gone (its owner drops the VM first).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
