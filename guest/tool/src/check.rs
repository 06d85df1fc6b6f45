// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm check`: data patterns in shared memory.
//!
//! Self check: write `seed ^ off` to every word, read it all back, twice
//! with different seeds (so stale data from the first pass cannot pass the
//! second). Host check: the host wrote `HOST_PATTERN ^ off` at
//! [`host_offsets`]; we verify those and write `GUEST_PATTERN ^ off` at
//! [`guest_offsets`] for the host to verify after the VM is gone.

use crate::Error;

pub const HOST_PATTERN: u64 = 0x1111_2222_3333_4444;
pub const GUEST_PATTERN: u64 = 0x5555_6666_7777_8888;
const SELF_SEEDS: [u64; 2] = [0xA5A5_5A5A_0F0F_F0F0, 0x0123_4567_89AB_CDEF];

/// Word access to shared memory; the real one is `dev::Shm`.
pub trait Words {
    fn len(&self) -> u64;
    fn read(&self, off: u64) -> Result<u64, Error>;
    fn write(&self, off: u64, value: u64) -> Result<(), Error>;
}

impl Words for crate::dev::Shm {
    fn len(&self) -> u64 {
        crate::dev::Shm::len(self) as u64
    }
    fn read(&self, off: u64) -> Result<u64, Error> {
        crate::dev::Shm::read(self, off)
    }
    fn write(&self, off: u64, value: u64) -> Result<(), Error> {
        crate::dev::Shm::write(self, off, value)
    }
}

/// Where the host writes its pattern: the first word after the ping-pong
/// rendezvous block (docs/pingpong.md owns 0..0x200), the second page, the
/// last word.
pub fn host_offsets(size: u64) -> [u64; 3] {
    [crate::rendezvous::END, 4096, size - 8]
}

/// Where we write ours: one cache line after each host offset (the last
/// one below the end).
pub fn guest_offsets(size: u64) -> [u64; 3] {
    [crate::rendezvous::END + 64, 4096 + 64, size - 64]
}

/// Smallest region the host/guest offsets fit in without overlapping.
pub const MIN_HOST_CHECK_SIZE: u64 = 8192;

/// Fill every word with `seed ^ off`, then verify them all.
pub fn self_check(mem: &impl Words) -> Result<u64, Error> {
    let len = mem.len() & !7;
    for seed in SELF_SEEDS {
        for off in (0..len).step_by(8) {
            mem.write(off, seed ^ off)?;
        }
        for off in (0..len).step_by(8) {
            expect(mem, off, seed ^ off)?;
        }
    }
    Ok(len)
}

/// Verify the host's words, then write ours.
pub fn host_check(mem: &impl Words) -> Result<(), Error> {
    let size = mem.len();
    if size < MIN_HOST_CHECK_SIZE {
        return Err(Error::TooSmall(size, MIN_HOST_CHECK_SIZE));
    }
    for off in host_offsets(size) {
        expect(mem, off, HOST_PATTERN ^ off)?;
    }
    for off in guest_offsets(size) {
        mem.write(off, GUEST_PATTERN ^ off)?;
    }
    Ok(())
}

fn expect(mem: &impl Words, off: u64, want: u64) -> Result<(), Error> {
    let got = mem.read(off)?;
    if got != want {
        return Err(Error::Mismatch { off, want, got });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    struct VecWords(RefCell<Vec<u64>>);

    impl VecWords {
        fn new(bytes: usize) -> Self {
            VecWords(RefCell::new(vec![0; bytes / 8]))
        }
    }

    impl Words for VecWords {
        fn len(&self) -> u64 {
            self.0.borrow().len() as u64 * 8
        }
        fn read(&self, off: u64) -> Result<u64, Error> {
            self.0
                .borrow()
                .get((off / 8) as usize)
                .copied()
                .ok_or(Error::OutOfRange(off))
        }
        fn write(&self, off: u64, value: u64) -> Result<(), Error> {
            let mut v = self.0.borrow_mut();
            let w = v
                .get_mut((off / 8) as usize)
                .ok_or(Error::OutOfRange(off))?;
            *w = value;
            Ok(())
        }
    }

    #[test]
    fn offsets_for_4m_are_the_ones_the_host_tests_use() {
        let size = 4 << 20;
        assert_eq!(host_offsets(size), [0x200, 0x1000, size - 8]);
        assert_eq!(guest_offsets(size), [0x240, 0x1040, size - 64]);
    }

    #[test]
    fn check_words_stay_clear_of_the_ping_pong_rendezvous() {
        for size in [MIN_HOST_CHECK_SIZE, 1 << 16, 4 << 20] {
            for off in host_offsets(size).into_iter().chain(guest_offsets(size)) {
                assert!(off >= crate::rendezvous::END, "size {size}: {off:#x}");
                assert!(off + 8 <= size, "size {size}: {off:#x}");
            }
        }
    }

    #[test]
    fn host_and_guest_offsets_never_overlap() {
        for size in [MIN_HOST_CHECK_SIZE, 1 << 16, 4 << 20] {
            for h in host_offsets(size) {
                for g in guest_offsets(size) {
                    assert!(h + 8 <= g || g + 8 <= h, "size {size}: {h} vs {g}");
                }
            }
        }
    }

    #[test]
    fn host_check_accepts_host_pattern_and_writes_guest_pattern() {
        let mem = VecWords::new(1 << 16);
        for off in host_offsets(1 << 16) {
            mem.write(off, HOST_PATTERN ^ off).unwrap();
        }
        host_check(&mem).unwrap();
        for off in guest_offsets(1 << 16) {
            assert_eq!(mem.read(off).unwrap(), GUEST_PATTERN ^ off);
        }
    }

    #[test]
    fn host_check_reports_the_first_bad_word() {
        let mem = VecWords::new(1 << 16);
        mem.write(0x200, HOST_PATTERN ^ 0x200).unwrap();
        match host_check(&mem) {
            Err(Error::Mismatch { off, want, got }) => {
                assert_eq!((off, want, got), (4096, HOST_PATTERN ^ 4096, 0));
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn host_check_refuses_tiny_regions() {
        assert!(matches!(
            host_check(&VecWords::new(4096)),
            Err(Error::TooSmall(4096, _))
        ));
    }

    #[test]
    fn self_check_covers_every_word() {
        let mem = VecWords::new(4096);
        assert_eq!(self_check(&mem).unwrap(), 4096);
        assert_eq!(mem.read(4088).unwrap(), SELF_SEEDS[1] ^ 4088);
    }
}
