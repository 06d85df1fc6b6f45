// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm bw`: memcpy bandwidth from private memory into BAR2 and back.
//! The mapping's memory type (write-back vs uncached) dominates this.

use std::hint::black_box;
use std::time::{Duration, Instant};

use crate::dev::Shm;

#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    pub bytes: u64,
    pub write_mbps: f64,
    pub read_mbps: f64,
}

/// Copy `size` bytes repeatedly for about `ms` milliseconds each way.
pub fn measure(shm: &Shm, size: usize, ms: u64) -> Bandwidth {
    let size = size.min(shm.len());
    let mut local = vec![0x5Au8; size];
    let budget = Duration::from_millis(ms.max(1));
    let write_mbps = run(budget, size, || {
        // SAFETY: `local` has `size` bytes, the mapping at least `size`;
        // they cannot overlap (one is heap, one is a device mapping).
        unsafe { std::ptr::copy_nonoverlapping(local.as_ptr(), shm.as_ptr(), size) };
        black_box(shm.as_ptr());
    });
    let read_mbps = run(budget, size, || {
        // SAFETY: as above, in the other direction.
        unsafe { std::ptr::copy_nonoverlapping(shm.as_ptr(), local.as_mut_ptr(), size) };
        black_box(local.as_ptr());
    });
    Bandwidth {
        bytes: size as u64,
        write_mbps,
        read_mbps,
    }
}

/// MB/s (10^6 bytes per second) of calling `copy` until `budget` is spent.
fn run(budget: Duration, size: usize, mut copy: impl FnMut()) -> f64 {
    copy(); // fault the mapping in before timing
    let start = Instant::now();
    let mut copies = 0u64;
    while start.elapsed() < budget {
        copy();
        copies += 1;
    }
    mbps(copies * size as u64, start.elapsed())
}

fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    bytes as f64 / secs / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbps_is_decimal_megabytes_per_second() {
        assert_eq!(mbps(2_000_000, Duration::from_secs(1)), 2.0);
        assert_eq!(mbps(1_000_000, Duration::from_millis(500)), 2.0);
        assert_eq!(mbps(5, Duration::ZERO), 0.0);
    }
}
