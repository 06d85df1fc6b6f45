// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The seccomp sandbox on real processes: every thread of a running VM, an
//! `ivvmm server` and an `ivvmm client` is confined (Seccomp: 2, filter
//! mode) with NoNewPrivs, `--seccomp off` confines nothing, and ivvmm runs
//! as an unprivileged user who may open /dev/kvm.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const BOOT: Duration = Duration::from_secs(30);

/// `(tid, status text)` of every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let dir = format!("/proc/{pid}/task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let tid = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Ok(status) = std::fs::read_to_string(format!("{dir}/{tid}/status")) {
            out.push((tid, status));
        }
    }
    out
}

/// Asserts every thread of `pid` runs under a seccomp filter with
/// no_new_privs, and that there are at least `min_threads` of them.
fn assert_confined(what: &str, pid: u32, min_threads: usize) {
    let threads = threads(pid);
    assert!(
        threads.len() >= min_threads,
        "{what}: {} threads, expected at least {min_threads}",
        threads.len()
    );
    for (tid, status) in &threads {
        let name = status.lines().next().unwrap_or("");
        assert!(
            status.contains("\nSeccomp:\t2\n"),
            "{what}: thread {tid} ({name}) is not under a seccomp filter:\n{status}"
        );
        assert!(
            status.contains("\nNoNewPrivs:\t1\n"),
            "{what}: thread {tid} ({name}) lacks no_new_privs:\n{status}"
        );
    }
}

fn assert_not_confined(what: &str, pid: u32) {
    for (tid, status) in threads(pid) {
        assert!(
            status.contains("\nSeccomp:\t0\n"),
            "{what}: thread {tid} has a filter:\n{status}"
        );
    }
}

fn pong_vm(server: &Server, extra: &[&str]) -> Running {
    let kernel = testguest(false);
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=pingpong role=pong rounds=1000",
        "--server",
        server.path(),
        "--vectors",
        "1",
        "--cpus",
        "2",
    ];
    args.extend_from_slice(extra);
    let mut vm = Running::ivvmm(&args);
    vm.wait_for("pingpong role=pong id=", BOOT);
    vm
}

#[test]
fn every_thread_of_a_vm_a_server_and_a_client_is_confined() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M", "-n", "1"]);
    let vm = pong_vm(&server, &[]);
    let mut client = Running::ivvmm(&["client", "-S", server.path()]);
    client.wait_for("id=", Duration::from_secs(10));
    // The VM: the event loop and both vCPU threads (the second one waits
    // for a SIPI the guest never sends, confined all the same).
    assert_confined("VM", vm.child.id(), 3);
    assert_confined("server", server.proc.as_ref().unwrap().child.id(), 1);
    assert_confined("client", client.child.id(), 1);

    // And each still ends in order under its filter (teardown included).
    client.signal(libc::SIGTERM);
    let client = client.finish(Duration::from_secs(10));
    vm.signal(libc::SIGTERM);
    let vm = vm.finish(Duration::from_secs(10));
    let server = server.stop();
    assert_eq!(vm.code(), 128 + libc::SIGTERM, "{vm:?}");
    assert_eq!(client.code(), 0, "{client:?}");
    assert_eq!(server.code(), 0, "{server:?}");
    for (what, out) in [("vm", &vm), ("client", &client), ("server", &server)] {
        assert!(!out.stderr.contains("seccomp"), "{what}: {out:?}");
    }
}

#[test]
fn seccomp_off_confines_nothing_and_log_confines_too() {
    if !require_kvm() {
        return;
    }
    let server = Server::start(&["-l", "4M", "-n", "1"]);
    let off = pong_vm(&server, &["--seccomp", "off"]);
    assert_not_confined("VM --seccomp off", off.child.id());
    let log = pong_vm(&server, &["--seccomp", "log"]);
    assert_confined("VM --seccomp log", log.child.id(), 3);
    drop(off);
    drop(log);
    server.stop();
}

const TEST_USER: &str = "ivvmm-test";

/// Puts /dev/kvm's ACL back as it was when dropped (getfacl/setfacl
/// --restore: whatever entries the host had stay exactly as they were).
struct KvmAcl {
    saved: std::path::PathBuf,
}

impl KvmAcl {
    fn save() -> KvmAcl {
        let out = Command::new("getfacl")
            .args(["--absolute-names", "/dev/kvm"])
            .output()
            .expect("getfacl (apt-get install acl)");
        assert!(out.status.success(), "getfacl /dev/kvm failed");
        let saved = std::env::temp_dir().join(unique("ivvmm-kvm-acl"));
        std::fs::write(&saved, &out.stdout).unwrap();
        KvmAcl { saved }
    }
}

impl Drop for KvmAcl {
    fn drop(&mut self) {
        let restored = Command::new("setfacl")
            .arg(format!("--restore={}", self.saved.display()))
            .status();
        let _ = std::fs::remove_file(&self.saved);
        if !restored.is_ok_and(|s| s.success()) {
            eprintln!("could not restore the ACL of /dev/kvm; check it with getfacl /dev/kvm");
        }
    }
}

fn uid_gid_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

fn boot_as(uid: u32, gid: u32) -> Outcome {
    let kernel = testguest(false);
    let child = Command::new(ivvmm())
        .args([
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            "test=hello",
        ])
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ivvmm as the test user");
    wait_with_deadline(child, Duration::from_secs(60))
}

/// Needs root (to create the user and set the ACL); skipped loudly otherwise.
#[test]
fn runs_unprivileged_with_an_acl_on_dev_kvm() {
    if !require_kvm() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root to create the user {TEST_USER} and an ACL on /dev/kvm");
        return;
    }
    assert!(
        Path::new("/usr/bin/setfacl").exists() || Path::new("/bin/setfacl").exists(),
        "setfacl is missing: apt-get install acl"
    );
    if uid_gid_of(TEST_USER).is_none() {
        let made = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                TEST_USER,
            ])
            .status()
            .expect("useradd");
        assert!(made.success(), "useradd {TEST_USER} failed");
    }
    let (uid, gid) = uid_gid_of(TEST_USER).expect("the test user exists");
    assert_ne!(uid, 0);

    let _acl = KvmAcl::save();
    // Without an ACL entry the user can't open /dev/kvm (0600 root here).
    let _ = Command::new("setfacl")
        .args(["-x", &format!("u:{TEST_USER}"), "/dev/kvm"])
        .status();
    let denied = boot_as(uid, gid);
    let mode = std::fs::metadata("/dev/kvm").map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode()
    });
    if mode.is_ok_and(|m| m & 0o006 == 0) {
        assert_eq!(denied.code(), 1, "{denied:?}");
        assert!(
            denied.stderr.contains("/dev/kvm is not accessible"),
            "{denied:?}"
        );
    }

    let set = Command::new("setfacl")
        .args(["-m", &format!("u:{TEST_USER}:rw"), "/dev/kvm"])
        .status()
        .expect("setfacl");
    assert!(set.success(), "setfacl on /dev/kvm failed");
    let out = boot_as(uid, gid);
    assert!(out.stdout.contains("Hello from testguest"), "{out:?}");
    assert!(out.passed(), "{out:?}");
}
