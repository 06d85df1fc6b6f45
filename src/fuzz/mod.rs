// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The fuzz harness: random operation sequences against the ivshmem device
//! (over the recording fake VM, no `/dev/kvm`) and the server protocol
//! (over socketpairs), each step checked against invariants. On stable
//! Rust, seeded and deterministic; `scripts/fuzz` runs it.
//!
//! A [`Target`] generates operations and runs a sequence of them on a fresh
//! instance, returning the first invariant broken. [`run`] feeds each
//! target sequences until the operation budget is spent; a failing
//! sequence is shrunk (operations dropped while it still fails) and
//! reported with its seed.
//!
//! Test-only code, above every layer it drives: nothing imports it.

pub mod device;
pub mod peer;
pub mod server;

use std::fmt::Debug;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// splitmix64: small, fast, seedable, and good enough to pick operations.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `0..n` (n > 0; a tiny bias is fine here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One broken invariant: at which operation, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub step: usize,
    pub what: String,
}

/// Something to fuzz.
pub trait Target {
    type Op: Clone + Debug;
    /// Its name in reports.
    fn name(&self) -> &'static str;
    /// Parameters of one instance (device shape, ...), from `rng`.
    type Setup: Clone + Debug;
    fn setup(&self, rng: &mut Rng) -> Self::Setup;
    /// A random sequence of about `len` operations for `setup`.
    fn generate(&self, setup: &Self::Setup, rng: &mut Rng, len: usize) -> Vec<Self::Op>;
    /// Runs `ops` on a fresh instance, checking after each; the first
    /// broken invariant, if any.
    fn execute(&self, setup: &Self::Setup, ops: &[Self::Op]) -> Result<(), Failure>;
}

/// Runs `execute`, turning a panic (an overflow, an index out of range)
/// into a failure.
pub fn execute_caught<T: Target>(
    target: &T,
    setup: &T::Setup,
    ops: &[T::Op],
) -> Result<(), Failure> {
    match panic::catch_unwind(AssertUnwindSafe(|| target.execute(setup, ops))) {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            Err(Failure {
                step: usize::MAX,
                what: format!("panicked: {what}"),
            })
        }
    }
}

/// Drops operations from a failing sequence while it still fails: first
/// everything after the failing step, then chunks of halving size, then
/// single operations. Bounded by `budget` executions.
pub fn shrink<T: Target>(
    target: &T,
    setup: &T::Setup,
    ops: Vec<T::Op>,
    first: Failure,
    budget: usize,
) -> (Vec<T::Op>, Failure) {
    let mut ops = ops;
    let mut failure = first;
    if failure.step < ops.len() {
        ops.truncate(failure.step + 1);
    }
    let mut runs = 0;
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        let mut progress = false;
        while i < ops.len() && runs < budget {
            let end = (i + chunk).min(ops.len());
            let mut candidate = ops[..i].to_vec();
            candidate.extend_from_slice(&ops[end..]);
            runs += 1;
            match execute_caught(target, setup, &candidate) {
                Err(f) => {
                    ops = candidate;
                    if f.step < ops.len() {
                        ops.truncate(f.step + 1);
                    }
                    failure = f;
                    progress = true;
                }
                Ok(()) => i += chunk,
            }
        }
        if runs >= budget || (chunk == 1 && !progress) {
            break;
        }
        if !progress {
            chunk = chunk.div_ceil(2);
        }
    }
    (ops, failure)
}

/// A failing sequence, shrunk, as reported.
#[derive(Debug)]
pub struct Found<Op> {
    pub target: &'static str,
    pub seed: u64,
    pub setup: String,
    pub ops: Vec<Op>,
    pub failure: Failure,
}

/// What one target did.
#[derive(Debug)]
pub struct Outcome {
    pub target: &'static str,
    pub ops: u64,
    pub sequences: u64,
    pub failures: u64,
    pub elapsed: Duration,
    /// The first failure, shrunk, printed.
    pub report: Option<String>,
}

/// Feeds `target` sequences of `seq_len` operations (each from its own
/// seed derived from `seed`) until `ops` operations have run. Stops at
/// the first failure after shrinking it.
pub fn run<T: Target>(target: &T, seed: u64, ops: u64, seq_len: usize) -> Outcome {
    let start = Instant::now();
    let mut master = Rng::new(seed);
    let mut done = 0u64;
    let mut sequences = 0u64;
    while done < ops {
        let seq_seed = master.next_u64();
        let mut rng = Rng::new(seq_seed);
        let setup = target.setup(&mut rng);
        let len = seq_len.min(usize::try_from(ops - done).unwrap_or(usize::MAX));
        let seq = target.generate(&setup, &mut rng, len);
        sequences += 1;
        done += seq.len() as u64;
        if let Err(f) = execute_caught(target, &setup, &seq) {
            let (ops, failure) = shrink(target, &setup, seq, f, 4000);
            let found = Found {
                target: target.name(),
                seed: seq_seed,
                setup: format!("{setup:?}"),
                ops,
                failure,
            };
            return Outcome {
                target: target.name(),
                ops: done,
                sequences,
                failures: 1,
                elapsed: start.elapsed(),
                report: Some(format_found(&found)),
            };
        }
    }
    Outcome {
        target: target.name(),
        ops: done,
        sequences,
        failures: 0,
        elapsed: start.elapsed(),
        report: None,
    }
}

fn format_found<Op: Debug>(f: &Found<Op>) -> String {
    let mut s = format!(
        "FAILED {}: sequence seed {:#x}: {}\n  after op {} of the shortest failing sequence ({} ops)\n  setup: {}\n",
        f.target,
        f.seed,
        f.failure.what,
        if f.failure.step == usize::MAX {
            "?".to_string()
        } else {
            f.failure.step.to_string()
        },
        f.ops.len(),
        f.setup
    );
    for (i, op) in f.ops.iter().enumerate() {
        s.push_str(&format!("  {i:4}: {op:?}\n"));
    }
    s
}

/// Quiets the default panic message while fuzzing (panics are reported
/// as failures, with their message); returns the previous hook.
pub fn quiet_panics() {
    panic::set_hook(Box::new(|_| {}));
}

/// A fresh directory under the system's temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `ivvmm-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Result<TempDir, String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ivvmm-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_per_seed() {
        let a: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..4)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..4)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(3) < 3));
    }

    /// Fails once a sequence holds both a 3 and, later, a 5.
    struct ThreeThenFive;

    impl Target for ThreeThenFive {
        type Op = u8;
        type Setup = ();
        fn name(&self) -> &'static str {
            "three-then-five"
        }
        fn setup(&self, _: &mut Rng) {}
        fn generate(&self, _: &(), rng: &mut Rng, len: usize) -> Vec<u8> {
            (0..len).map(|_| rng.below(10) as u8).collect()
        }
        fn execute(&self, _: &(), ops: &[u8]) -> Result<(), Failure> {
            let mut seen3 = false;
            for (step, &op) in ops.iter().enumerate() {
                seen3 |= op == 3;
                if seen3 && op == 5 {
                    return Err(Failure {
                        step,
                        what: "3 then 5".into(),
                    });
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_failure_is_shrunk_to_its_two_operations() {
        let out = run(&ThreeThenFive, 42, 10_000, 100);
        assert_eq!(out.failures, 1);
        let report = out.report.unwrap();
        assert!(report.contains("(2 ops)"), "{report}");
        assert!(
            report.contains("0: 3") && report.contains("1: 5"),
            "{report}"
        );
    }
}
