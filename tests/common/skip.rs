// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! How a test that cannot run here says so; never a silent pass.
//!
//! - [`skipped`]: what this machine lacks and no script can install
//!   (hardware KVM, a kernel without hugetlbfs). One `SKIPPED (why)` line on
//!   stderr, written past cargo's output capture, and the same line appended
//!   to `$IVVMM_SKIP_LOG`, from which `scripts/test` prints its summary.
//! - [`missing`]: a prerequisite `scripts/setup` provides (QEMU, the guest
//!   kernels, root where CI runs as root). Under `CI=true` its absence fails
//!   the test; elsewhere it is skipped as above.
//! - [`noted`]: what a passing test wants seen in the summary too (how many
//!   stalled nested runs it retried), through `$IVVMM_NOTE_LOG`.

use std::io::Write;

pub fn skipped(why: &str) {
    report("IVVMM_SKIP_LOG", &format!("SKIPPED ({why})"));
}

/// A line for `scripts/test`'s summary, e.g.
/// `nested (presence,rejoin): L1 stall retries: 0`.
pub fn noted(line: &str) {
    report("IVVMM_NOTE_LOG", line);
}

/// `line` on stderr (past cargo's output capture) and appended to the file
/// the environment variable `log` names, if set.
fn report(log: &str, line: &str) {
    let line = format!("{line}\n");
    // One write, so that it does not interleave with the harness's lines.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os(log) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        if let Ok(mut file) = file {
            let _ = file.write_all(line.as_bytes());
        }
    }
}

pub fn missing(what: &str) {
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{what}; scripts/setup provides it, so under CI=true this is a failure, not a skip"
    );
    skipped(what);
}
