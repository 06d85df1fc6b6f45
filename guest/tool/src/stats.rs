// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Latency percentiles (nearest-rank) over round-trip samples in ns.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    /// None for no samples. Sorts `samples` in place.
    pub fn of(samples: &mut [u64]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = |p: usize| {
            // nearest rank: the smallest value with at least p% at or below it
            let n = samples.len();
            let idx = (p * n).div_ceil(100).max(1) - 1;
            samples[idx.min(n - 1)]
        };
        Some(Percentiles {
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: samples[samples.len() - 1],
        })
    }
}

impl std::fmt::Display for Percentiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50={} p90={} p99={} max={}",
            self.p50, self.p90, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_percentiles() {
        assert_eq!(Percentiles::of(&mut []), None);
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let p = Percentiles::of(&mut [7]).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (7, 7, 7, 7));
    }

    #[test]
    fn hundred_samples_use_nearest_rank() {
        let mut s: Vec<u64> = (1..=100).rev().collect();
        let p = Percentiles::of(&mut s).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
    }

    #[test]
    fn display_is_the_machine_readable_line() {
        let p = Percentiles {
            p50: 1,
            p90: 2,
            p99: 3,
            max: 4,
        };
        assert_eq!(p.to_string(), "p50=1 p90=2 p99=3 max=4");
    }
}
