// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Host copy bandwidth into and out of a shared-memory object, measured the
//! way the test guest's `ivshmem-bw` measures BAR2: a RAM buffer, one
//! untimed copy, then `iters` copies timed with rdtsc (the guest reads the
//! same TSC, so the cycles compare directly).
//!
//!     shm_bw --shm NAME --size 1048576 --iters 16
//!
//! prints, for each method (`rep movsb` as the guest uses, and libc memcpy):
//!
//!     bw method=movsb dir=to_shm bytes=B cycles=C
//!     bw method=movsb dir=from_shm bytes=B cycles=C
//!     ...
//!     bw tsc_per_us=N
//!
//! `shm_bw --tsc` prints only the last line (the TSC rate, measured).

mod common;

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use clap::Parser;

use common::{rdtsc, tsc_per_us};

#[derive(Parser)]
#[command(about = "Host copy bandwidth into and out of a shared-memory object, in TSC cycles")]
struct Args {
    /// The POSIX shared-memory object (/dev/shm/NAME) the VM used.
    #[arg(long, conflicts_with = "path")]
    shm: Option<String>,
    /// Or a file path.
    #[arg(long)]
    path: Option<PathBuf>,
    /// Bytes per copy; the object must be at least this large.
    #[arg(long, default_value_t = 1 << 20)]
    size: usize,
    /// Timed copies per direction.
    #[arg(long, default_value_t = 16)]
    iters: u64,
    /// Only print the TSC rate (`bw tsc_per_us=N`), copying nothing.
    #[arg(long)]
    tsc: bool,
}

#[derive(Debug, thiserror::Error)]
enum BwError {
    #[error("give --shm NAME or --path FILE")]
    NoObject,
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("{0} holds {1} bytes, fewer than --size {2}")]
    TooSmall(PathBuf, u64, usize),
    #[error("cannot map {0} bytes: {1}")]
    Map(usize, std::io::Error),
    #[error("--size must be > 0 and --iters > 0")]
    Args,
    #[error("the data did not arrive: {0}")]
    Verify(&'static str),
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `fd` None: anonymous private memory (the "RAM" side), populated.
    fn new(len: usize, fd: Option<i32>) -> Result<Mapping, BwError> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping of len bytes; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BwError::Map(len, std::io::Error::last_os_error()));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is len bytes, readable and writable, and ours.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what new() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[derive(Clone, Copy)]
enum Method {
    Movsb,
    Memcpy,
}

fn copy(method: Method, dst: *mut u8, src: *const u8, n: usize) {
    match method {
        // SAFETY: dst and src are distinct mappings of at least n bytes (the
        // caller's Mappings); the direction flag is clear per the ABI.
        Method::Movsb => unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        },
        // SAFETY: as above; the regions do not overlap.
        Method::Memcpy => unsafe {
            libc::memcpy(dst.cast(), src.cast(), n);
        },
    }
}

/// One untimed copy, then `iters` timed; returns the cycles.
fn timed(method: Method, dst: *mut u8, src: *const u8, n: usize, iters: u64) -> u64 {
    copy(method, dst, src, n);
    let t0 = rdtsc();
    for _ in 0..iters {
        copy(method, dst, src, n);
    }
    rdtsc() - t0
}

fn run(args: &Args) -> Result<(), BwError> {
    if args.tsc {
        println!("bw tsc_per_us={:.1}", tsc_per_us(200));
        return Ok(());
    }
    if args.size == 0 || args.iters == 0 {
        return Err(BwError::Args);
    }
    let path = match (&args.shm, &args.path) {
        (Some(name), _) => PathBuf::from("/dev/shm").join(name),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(BwError::NoObject),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| BwError::Open(path.clone(), e))?;
    let len = file
        .metadata()
        .map_err(|e| BwError::Open(path.clone(), e))?
        .len();
    if len < args.size as u64 {
        return Err(BwError::TooSmall(path, len, args.size));
    }
    let mut shm = Mapping::new(args.size, Some(file.as_raw_fd()))?;
    let mut ram = Mapping::new(args.size, None)?;
    for (i, b) in ram.bytes().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(1);
    }
    for (method, name) in [(Method::Movsb, "movsb"), (Method::Memcpy, "memcpy")] {
        let c = timed(method, shm.ptr, ram.ptr, args.size, args.iters);
        if shm.bytes() != ram.bytes() {
            return Err(BwError::Verify("RAM -> shm"));
        }
        println!(
            "bw method={name} dir=to_shm bytes={} cycles={c}",
            args.size as u64 * args.iters
        );
        ram.bytes().fill(0);
        let c = timed(method, ram.ptr, shm.ptr, args.size, args.iters);
        if shm.bytes() != ram.bytes() {
            return Err(BwError::Verify("shm -> RAM"));
        }
        println!(
            "bw method={name} dir=from_shm bytes={} cycles={c}",
            args.size as u64 * args.iters
        );
    }
    println!("bw tsc_per_us={:.1}", tsc_per_us(100));
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shm_bw: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
