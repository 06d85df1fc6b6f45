// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Linux in ivvmm on SVM emulated by QEMU TCG: `guest/nested/run.sh` boots
//! an L1 Linux with KVM_AMD under `qemu-system-x86_64 -accel tcg`, and
//! inside it ivvmm (a static build of this tree) boots our guest kernel and
//! initramfs with the ivshmem driver (L2). This is where ivvmm's main use
//! case runs on a host whose own /dev/kvm cannot boot Linux (PVM).
//!
//! Needs qemu-system-x86_64, the L2 images (`scripts/setup`) and
//! linux-source-6.1; without them the test prints `SKIPPED (...)` and
//! returns. The first run builds the L1 kernel (about 3 min on 2 cores) and
//! a static ivvmm (1-2 min cold) under ~/.cache/ivvmm and /tmp/nested-target;
//! after that a run takes about 15 s.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{field_of, repo, wait_with_deadline};

/// Builds included (cold cache), plus run.sh's own QEMU limit and a retry.
const DEADLINE: Duration = Duration::from_secs(20 * 60);

fn skipped(why: &str) {
    let line = format!("SKIPPED ({why})\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Why this test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Some("qemu-system-x86_64 is missing: install qemu-system-x86".into());
    }
    let tarball = "/usr/src/linux-source-6.1.tar.xz";
    if std::env::var_os("IVVMM_KERNEL_TAR").is_none() && !Path::new(tarball).exists() {
        return Some(format!("{tarball} is missing: install linux-source-6.1"));
    }
    for script in ["guest/kernel/build.sh", "guest/initramfs/build.sh"] {
        let ok = Command::new(repo().join(script))
            .arg("--print-path")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("no L2 image from {script}: run scripts/setup"));
        }
    }
    None
}

/// The one stdout line that starts with `prefix`.
fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    let found: Vec<&str> = stdout.lines().filter(|l| l.starts_with(prefix)).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one line starting with {prefix:?}, found {}\n{stdout}",
            found.len()
        ),
    }
}

fn val(line: &str, key: &str) -> String {
    field_of(line, key).unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn linux_boots_in_ivvmm_on_nested_svm_and_two_vms_ping_pong() {
    if let Some(why) = missing_prerequisite() {
        skipped(&why);
        return;
    }
    let child = Command::new(repo().join("guest/nested/run.sh"))
        .arg("info,pingpong,term")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run guest/nested/run.sh");
    let out = wait_with_deadline(child, DEADLINE);
    let all = format!("{}\n{}", out.stderr, out.stdout);
    assert_eq!(out.code(), 0, "guest/nested/run.sh failed\n{all}");
    let stdout = out.stdout.as_str();

    // (a) L2 Linux booted in ivvmm, the driver bound the plain device and
    // maps BAR2 write-back.
    let info = line(stdout, "L2 info| info: ok");
    assert_eq!(val(info, "size"), "4194304", "{info}");
    assert_eq!(val(info, "vectors"), "0", "{info}");
    assert_eq!(val(info, "cache"), "write-back", "{info}");
    assert_eq!(val(line(stdout, "NESTED-RESULT: info"), "rc"), "0");

    // (b) two VMs on `ivvmm server`: 100 doorbell round trips, each VM
    // ringing the other's id.
    let ping_info = line(stdout, "L2 ping| info: ok");
    let ping = line(stdout, "L2 ping| ping: ok");
    let pong = line(stdout, "L2 pong| pong: ok");
    assert_eq!(val(ping_info, "vectors"), "2", "{ping_info}");
    assert_eq!(val(ping, "rounds"), "100", "{ping}");
    assert_eq!(val(pong, "rounds"), "100", "{pong}");
    assert_eq!(val(ping, "peer"), val(pong, "position"), "ping rang pong");
    assert_eq!(
        val(pong, "peer"),
        val(ping_info, "position"),
        "pong rang ping"
    );
    assert_ne!(val(ping_info, "position"), val(pong, "position"));
    let p50: u64 = val(ping, "p50").parse().expect("p50 in ns");
    assert!(p50 > 0, "{ping}");
    assert_eq!(val(line(stdout, "NESTED-RESULT: pingpong"), "rc"), "0");

    // SIGTERM stops ivvmm while its vCPU is halted in KVM.
    assert_eq!(val(line(stdout, "NESTED-RESULT: term"), "rc"), "0", "{all}");
    line(stdout, "NESTED-DONE: failed=0");
    eprintln!("{ping}");
}
