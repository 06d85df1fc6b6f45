// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Running `guest/nested/run.sh` (Linux in ivvmm on QEMU TCG's emulated
//! SVM) and reading what it printed, scenario by scenario: shared by
//! tests/linux_nested.rs and tests/stock_kernels.rs.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::{val, Output};
use crate::common::{repo, wait_with_deadline, Outcome};

/// run.sh's own QEMU limit (300 s) and a retry after a stall, plus a
/// static ivvmm build.
pub const DEADLINE: Duration = Duration::from_secs(15 * 60);

/// Why a nested test cannot run here, if it cannot: QEMU, or an image
/// `scripts/setup` builds (`(script, flags)` that print its path).
pub fn missing_prerequisite(images: &[(&str, &[&str])]) -> Option<String> {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Some("qemu-system-x86_64 is missing: install qemu-system-x86".into());
    }
    for (script, flags) in images {
        let ok = Command::new(repo().join(script))
            .args(*flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "nothing built by {script} {}: run scripts/setup",
                flags.join(" ")
            ));
        }
    }
    None
}

/// Runs `guest/nested/run.sh SCENARIOS` and insists it passed.
pub fn run(scenarios: &str) -> Outcome {
    let child = Command::new(repo().join("guest/nested/run.sh"))
        .arg(scenarios)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run guest/nested/run.sh");
    let out = wait_with_deadline(child, DEADLINE);
    assert_eq!(
        out.code(),
        0,
        "guest/nested/run.sh failed\n{}\n{}",
        out.stderr,
        out.stdout
    );
    out
}

/// How many times run.sh retried a stalled L1 (its `nested: retries=N`).
pub fn retries(out: &Outcome) -> u32 {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("nested: retries="))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("run.sh printed no retry count\n{}", out.stderr))
}

/// One scenario's lines: from `NESTED-START: name` to its result line.
pub struct Scenario<'a> {
    pub name: &'a str,
    pub lines: Vec<&'a str>,
}

impl Scenario<'_> {
    /// L1's verdict on the scenario.
    pub fn assert_passed(&self) {
        let result = self
            .lines
            .last()
            .filter(|l| l.starts_with("NESTED-RESULT: "))
            .unwrap_or_else(|| panic!("{}: no NESTED-RESULT line", self.name));
        assert_eq!(val(result, "rc"), "0", "{}", self.lines.join("\n"));
    }

    /// What the L2 VM `vm` printed on its console (ivvmm's own lines too).
    pub fn vm(&self, vm: &str) -> Output {
        let prefix = format!("L2 {vm}| ");
        let text: Vec<&str> = self
            .lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        assert!(!text.is_empty(), "{}: no output from L2 {vm}", self.name);
        Output {
            name: format!("{}/{vm}", self.name),
            text: text.join("\n"),
            secs: 0.0,
        }
    }

    /// L1's own lines (`L1 ...`) that start with `prefix`.
    pub fn l1(&self, prefix: &str) -> Vec<&str> {
        let prefix = format!("L1 {prefix}");
        self.lines
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .copied()
            .collect()
    }
}

/// The scenarios `out` ran, which must be `want`, in order, each passed.
pub fn passed<'a>(out: &'a Outcome, want: &[&str]) -> Vec<Scenario<'a>> {
    let runs = scenarios(&out.stdout);
    let got: Vec<&str> = runs.iter().map(|s| s.name).collect();
    assert_eq!(got, want, "{}\n{}", out.stderr, out.stdout);
    for s in &runs {
        s.assert_passed();
    }
    runs
}

pub fn scenarios(stdout: &str) -> Vec<Scenario<'_>> {
    let mut all: Vec<Scenario> = Vec::new();
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("NESTED-START: ") {
            all.push(Scenario {
                name: name.trim(),
                lines: Vec::new(),
            });
        } else if let Some(cur) = all.last_mut() {
            let done = cur
                .lines
                .last()
                .is_some_and(|l| l.starts_with("NESTED-RESULT: "));
            if !done {
                cur.lines.push(line);
            }
        }
    }
    all
}
