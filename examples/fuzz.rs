// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The fuzz driver behind `scripts/fuzz`: runs every target of
//! `ivvmm::fuzz` for a share of `--ops` operations from `--seed`, prints
//! the seed, each target's figures, any failure (shrunk) and last a line
//! `N ops, M failures`. Exits 1 on a failure, 2 on bad arguments.

use std::process::ExitCode;
use std::time::Instant;

use ivvmm::fuzz::device::{DeviceTarget, Sabotage};
use ivvmm::fuzz::peer::PeerTarget;
use ivvmm::fuzz::server::ServerTarget;
use ivvmm::fuzz::{quiet_panics, run, Outcome};

fn usage(why: &str) -> ExitCode {
    eprintln!("fuzz: {why}; usage: fuzz [--ops N] [--seed S] [--sabotage irqfds|slots] (N like 10000000 or 10M, S decimal or 0x hex)");
    ExitCode::from(2)
}

fn parse_count(s: &str) -> Option<u64> {
    let (digits, mul) = match s.strip_suffix(['M', 'm']) {
        Some(d) => (d, 1_000_000),
        None => match s.strip_suffix(['k', 'K']) {
            Some(d) => (d, 1_000),
            None => (s, 1),
        },
    };
    digits
        .replace('_', "")
        .parse::<u64>()
        .ok()?
        .checked_mul(mul)
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn main() -> ExitCode {
    let mut ops = 10_000_000u64;
    let mut seed = None;
    let mut sabotage = Sabotage::None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match (a.as_str(), value) {
            ("--ops", Some(v)) => match parse_count(&v) {
                Some(n) if n > 0 => ops = n,
                _ => return usage(&format!("--ops {v} is not a positive count")),
            },
            ("--seed", Some(v)) => match parse_seed(&v) {
                Some(s) => seed = Some(s),
                None => return usage(&format!("--seed {v} is not a number")),
            },
            // Breaks the fake VM on purpose, to see a failure reported.
            ("--sabotage", Some(v)) => match v.as_str() {
                "irqfds" => sabotage = Sabotage::KeepIrqfds,
                "slots" => sabotage = Sabotage::KeepSlots,
                _ => return usage(&format!("--sabotage {v}: give irqfds or slots")),
            },
            (other, _) => return usage(&format!("unknown or incomplete argument {other}")),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!("fuzz: seed {seed:#x} ({ops} ops; rerun with --seed {seed:#x})");
    quiet_panics();
    let start = Instant::now();
    // The device is the larger surface and the cheaper operation: it gets
    // 80 % of the budget, the protocol (syscalls per operation) most of the
    // rest, the real server (sockets, a thread, handshakes) 1 %.
    let device_ops = ops / 5 * 4;
    let server_ops = (ops / 100).max(1);
    let outcomes: Vec<Outcome> = vec![
        run(&DeviceTarget { sabotage }, seed, device_ops, 1000),
        run(
            &PeerTarget,
            seed ^ 0x5eed,
            ops.saturating_sub(device_ops + server_ops),
            200,
        ),
        run(&ServerTarget, seed ^ 0x5e7e, server_ops, 60),
    ];
    let (mut total, mut failures) = (0, 0);
    for o in &outcomes {
        let secs = o.elapsed.as_secs_f64();
        println!(
            "fuzz: {}: {} ops in {} sequences, {:.1} s, {:.0} ops/s, {} failures",
            o.target,
            o.ops,
            o.sequences,
            secs,
            o.ops as f64 / secs.max(1e-9),
            o.failures
        );
        if let Some(r) = &o.report {
            print!("{r}");
        }
        total += o.ops;
        failures += o.failures;
    }
    println!(
        "fuzz: {:.1} s in all, seed {seed:#x}",
        start.elapsed().as_secs_f64()
    );
    println!("{total} ops, {failures} failures");
    if failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
