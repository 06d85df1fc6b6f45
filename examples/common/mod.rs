// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Helpers shared by the benchmark examples (included with `mod common;`):
//! the TSC rate, and summaries of samples.
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
