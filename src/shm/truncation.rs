// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Surviving shared memory that shrinks under a host process that maps it
//! (`ivvmm client`). Touching a page of a `MAP_SHARED` mapping past the end
//! of the file raises SIGBUS, which would kill the process. Once
//! [`survive_truncation`] is called, a SIGBUS inside one of our mappings
//! (they register themselves, see [`register`]) replaces that page with a
//! private page of all-ones — what a guest reads there too — says so once
//! on stderr, and lets the access go on; writes there then go nowhere
//! shared. A SIGBUS anywhere else still ends the process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Mappings the handler may repair: (start, len) pairs, 0 = free slot.
const SLOTS: usize = 16;
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static LENS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SAID: AtomicBool = AtomicBool::new(false);
const PAGE: usize = 4096;

/// Registers a mapping; returns its slot for [`unregister`] (None if full:
/// that mapping is then not repaired).
pub(super) fn register(start: usize, len: usize) -> Option<usize> {
    for (i, slot) in STARTS.iter().enumerate() {
        if slot
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            LENS[i].store(len, Ordering::SeqCst);
            return Some(i);
        }
    }
    None
}

pub(super) fn unregister(slot: usize) {
    LENS[slot].store(0, Ordering::SeqCst);
    STARTS[slot].store(0, Ordering::SeqCst);
}

/// Installs the SIGBUS handler (process-wide).
pub fn survive_truncation() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_SIGINFO,
        SigSet::empty(),
    );
    // SAFETY: the handler only does async-signal-safe work: atomic loads and
    // stores, mmap(2) and write(2), and _exit(2).
    unsafe { sigaction(Signal::SIGBUS, &action) }.map(|_| ())
}

fn ours(addr: usize) -> bool {
    STARTS.iter().zip(LENS.iter()).any(|(s, l)| {
        let (start, len) = (s.load(Ordering::SeqCst), l.load(Ordering::SeqCst));
        start != 0 && addr >= start && addr - start < len
    })
}

fn say(msg: &[u8]) {
    // SAFETY: write(2) of a static buffer to stderr.
    unsafe { libc::write(libc::STDERR_FILENO, msg.as_ptr().cast(), msg.len()) };
}

extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers;
    // si_addr is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    if !ours(addr) {
        say(b"ivvmm: bus error outside shared memory\n");
        // SAFETY: ends the process at once, as the default action would.
        unsafe { libc::_exit(128 + libc::SIGBUS) };
    }
    let page = addr & !(PAGE - 1);
    // SAFETY: replaces exactly one page of our own registered mapping (the
    // page past the end of the file, which no longer holds anything) with a
    // private anonymous page; no Rust reference points into the mapping
    // (all access is volatile through raw pointers), and MmapRegion's
    // munmap on drop covers the replaced page like any other.
    let p = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        say(b"ivvmm: shared memory shrank under us and the page could not be replaced\n");
        // SAFETY: as above.
        unsafe { libc::_exit(128 + libc::SIGBUS) };
    }
    // SAFETY: p is the fresh, writable page mapped just above.
    unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0xff, PAGE) };
    if !SAID.swap(true, Ordering::SeqCst) {
        say(b"ivvmm: the shared memory shrank under us (someone truncated it): past its new end reads are all-ones and writes are dropped\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::ShmBackend;

    #[test]
    fn a_truncated_mapping_reads_all_ones_instead_of_killing_us() {
        survive_truncation().unwrap();
        let shm = ShmBackend::memfd(4 * 4096, false).unwrap();
        let map = shm.map().unwrap();
        map.write_u32(3 * 4096, 7).unwrap();
        map.write_u32(0, 9).unwrap();
        nix::unistd::ftruncate(shm.file(), 4096).unwrap();
        assert_eq!(map.read_u32(3 * 4096), Some(u32::MAX), "past the end");
        assert_eq!(map.read_u32(0), Some(9), "what still exists");
        map.write_u32(3 * 4096, 5).unwrap();
        assert_eq!(map.read_u32(0), Some(9));
    }
}
