// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Bad input: one line naming the problem and the fix, exit status 2 for
//! usage errors and 1 for runtime failures, never a panic or a backtrace.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs ivvmm and checks the one-line error contract; returns stderr.
fn expect_error(args: &[&str], code: i32, needle: &str) -> String {
    let out = run_ivvmm(args, Duration::from_secs(30));
    check_error(&out, code, needle);
    out.stderr
}

fn check_error(out: &Outcome, code: i32, needle: &str) {
    assert_eq!(out.code(), code, "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "want exactly one line: {out:?}");
    assert!(lines[0].starts_with("ivvmm: "), "{out:?}");
    assert!(lines[0].contains(needle), "want '{needle}': {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(unique(name));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_kernel_flag_is_a_usage_error() {
    expect_error(&[], 2, "--kernel");
}

#[test]
fn unknown_flags_are_usage_errors() {
    let out = run_ivvmm(&["--kernal", "x"], Duration::from_secs(10));
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(out.stderr.contains("--kernal"), "{out:?}");
}

#[test]
fn missing_kernel_file() {
    if !require_kvm() {
        return;
    }
    expect_error(
        &["--kernel", "/nonexistent/bzImage"],
        1,
        "/nonexistent/bzImage",
    );
}

#[test]
fn kernel_that_is_a_directory() {
    if !require_kvm() {
        return;
    }
    expect_error(&["--kernel", "/tmp"], 1, "/tmp");
}

#[test]
fn file_that_is_not_a_kernel() {
    if !require_kvm() {
        return;
    }
    let junk = scratch("junk-kernel", &[0x42u8; 8192]);
    let err = expect_error(
        &["--kernel", junk.to_str().unwrap()],
        1,
        "neither a bzImage nor an ELF",
    );
    assert!(err.contains(junk.to_str().unwrap()), "{err}");
    let _ = std::fs::remove_file(junk);
}

#[test]
fn missing_initrd() {
    if !require_kvm() {
        return;
    }
    let k = testguest(false);
    expect_error(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            "/nonexistent/initrd",
        ],
        1,
        "/nonexistent/initrd",
    );
}

#[test]
fn initrd_that_does_not_fit() {
    if !require_kvm() {
        return;
    }
    let k = testguest(false);
    let big = scratch("big-initrd", &vec![0u8; 24 << 20]);
    let err = expect_error(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            big.to_str().unwrap(),
            "--mem",
            "16M",
        ],
        1,
        "--mem",
    );
    assert!(err.to_lowercase().contains("initrd"), "{err}");
    let _ = std::fs::remove_file(big);
}

#[test]
fn mem_too_small_or_malformed() {
    let k = "/nonexistent"; // never opened: flags are checked first
    expect_error(&["--kernel", k, "--mem", "1M"], 2, "at least 16M");
    expect_error(&["--kernel", k, "--mem", "lots"], 2, "--mem");
    expect_error(
        &["--kernel", k, "--mem", "99999999999999999999"],
        2,
        "too large",
    );
}

#[test]
fn mem_beyond_the_host() {
    if !require_kvm() {
        return;
    }
    let k = testguest(false);
    expect_error(
        &["--kernel", k.to_str().unwrap(), "--mem", "64T"],
        2,
        "more than this host's memory",
    );
}

#[test]
fn cpus_zero_or_beyond_kvm() {
    expect_error(&["--kernel", "/nonexistent", "--cpus", "0"], 2, "--cpus 0");
    if !require_kvm() {
        return;
    }
    let k = testguest(false);
    expect_error(
        &["--kernel", k.to_str().unwrap(), "--cpus", "300"],
        2,
        "at most",
    );
}

#[test]
fn bad_serial_choice() {
    if !require_kvm() {
        return;
    }
    let k = testguest(false);
    expect_error(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--serial",
            "/nonexistent/dir/log",
        ],
        1,
        "--serial",
    );
}

/// Runs `ivvmm` inside a private mount namespace where /dev is a fresh
/// tmpfs (so /dev/kvm is gone). Needs root; skipped loudly otherwise.
#[test]
fn dev_kvm_missing() {
    if !nix_is_root() {
        missing("needs root to hide /dev/kvm in a mount namespace");
        return;
    }
    let k = testguest(false);
    let script = format!(
        "mount -t tmpfs none /dev && exec {} --kernel {}",
        ivvmm(),
        k.display()
    );
    let out = run_in_private_mounts(&script, Duration::from_secs(30));
    check_error(&out, 1, "/dev/kvm does not exist");
}

/// /dev/kvm exists but belongs to root with mode 0600: an ordinary user
/// can't open it.
#[test]
fn dev_kvm_not_accessible() {
    if !nix_is_root() {
        missing("needs root to run ivvmm as another user");
        return;
    }
    let k = testguest(false);
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ivvmm(),
            "--kernel",
        ])
        .arg(&k)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv");
    let out = wait_with_deadline(child, Duration::from_secs(30));
    // As root /dev/kvm is usually 0660 root:kvm or 0600: either way uid 65534
    // without groups is refused.
    check_error(&out, 1, "/dev/kvm is not accessible");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
