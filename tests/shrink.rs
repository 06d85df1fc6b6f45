// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Shared memory truncated under a running VM (issue 11): the test guest
//! keeps reading BAR2 past the future end; the VMM must unmap what no
//! longer exists (the guest then reads all-ones there and its writes are
//! dropped), say so in one line, and still stop at once on SIGTERM. The
//! same for a host `ivvmm client`, which must not die of SIGBUS.

mod common;

use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const BOOT: Duration = Duration::from_secs(30);

fn truncate(path: &Path, size: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .set_len(size)
        .unwrap();
}

/// Boots the shrink case on `device`, truncates `object` to 4 KiB, and
/// checks what the guest saw, the VMM said, and how fast SIGTERM stops it.
fn truncated_under_the_guest(object: &Path, device: &[&str]) {
    let mut vm = start_guest("ivshmem-shrink offset=0x10000", device);
    vm.wait_for("ivshmem-shrink ready", BOOT);
    std::thread::sleep(Duration::from_millis(100));
    truncate(object, 4096);
    vm.wait_for("ivshmem-shrink seen", Duration::from_secs(10));
    let start = Instant::now();
    vm.signal(libc::SIGTERM);
    let out = vm.finish(Duration::from_secs(5));
    let took = start.elapsed();
    eprintln!("shrink: stopped {took:?} after SIGTERM");
    assert_eq!(out.code(), 128 + libc::SIGTERM, "{out:?}");
    assert!(took < Duration::from_secs(1), "SIGTERM took {took:?}");
    assert_eq!(
        out.field("ivshmem-shrink seen", "after_write").as_deref(),
        Some("0xffffffff"),
        "a write past the end is dropped: {out:?}"
    );
    assert_eq!(
        out.field("ivshmem-shrink seen", "low").as_deref(),
        Some("0x21574f4c"),
        "what still exists is intact: {out:?}"
    );
    assert_eq!(
        out.stderr.matches("shrank to 4K").count(),
        1,
        "one line naming the object and its new size: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("FAIL"), "{out:?}");
}

#[test]
fn a_truncated_shm_object_is_unmapped_and_the_vm_keeps_running() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-shrink");
    truncated_under_the_guest(&shm.path(), &["--shm", &shm.0, "--size", "1M"]);
}

#[test]
fn a_truncated_shm_path_file_is_unmapped_and_the_vm_keeps_running() {
    if !require_kvm() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("ivt-shrink-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mem");
    let path = file.to_str().unwrap().to_string();
    truncated_under_the_guest(&file, &["--shm-path", &path, "--size", "1M"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_server_memory_is_unmapped_and_the_vm_keeps_running() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-shrink-srv");
    let server = Server::start(&["-l", "1M", "-n", "1", "-M", &shm.0]);
    truncated_under_the_guest(&shm.path(), &["--server", server.path()]);
}

#[test]
fn a_host_client_survives_its_memory_shrinking() {
    let shm = ShmGuard::new("ivt-shrink-client");
    let server = Server::start(&["-l", "1M", "-n", "1", "-M", &shm.0]);
    let mut pong = Running::ivvmm(&["client", "-S", server.path(), "pong"]);
    pong.wait_for("id=", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    truncate(&shm.path(), 0);
    pong.wait_for("shrank under us", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    pong.signal(libc::SIGTERM);
    let out = pong.finish(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_ne!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "killed by SIGBUS: {out:?}"
    );
    assert_eq!(
        out.stderr.matches("shrank under us").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("seccomp"), "{}", out.stderr);
}
