// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The host side of `--shm`/`--shm-path`, end to end through the binary:
//! objects we create are 0600 and sized; existing ones are never resized;
//! a refused or failed start changes nothing and leaves nothing behind.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;

fn hello(extra: &[&str]) -> Outcome {
    boot_test("hello", extra)
}

/// Size, inode, mtime and a content hash: "exactly as it was".
fn fingerprint(path: &Path) -> (u64, u64, i64, u64) {
    let m = fs::metadata(path).unwrap();
    let data = fs::read(path).unwrap();
    let sum = fnv1a(&data);
    (
        m.len(),
        m.ino(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        sum,
    )
}

fn one_error_line(out: &Outcome, needle: &str) {
    assert_ne!(out.code(), 0, "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].contains(needle), "want '{needle}': {out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

#[test]
fn absent_object_is_created_private_and_sized_and_kept() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-new");
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    let m = fs::metadata(shm.path()).expect("object kept after a good run");
    assert_eq!(m.len(), 1 << 20);
    assert_eq!(
        m.permissions().mode() & 0o777,
        0o600,
        "not world-accessible"
    );
}

#[test]
fn existing_larger_object_is_used_as_is_never_truncated() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-big");
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8).collect();
    fs::write(shm.path(), &data).unwrap();
    let before = fingerprint(&shm.path());
    let out = hello(&["--shm", &shm.0, "--size", "4M"]);
    assert!(out.passed(), "{out:?}");
    let after = fingerprint(&shm.path());
    assert_eq!(before.0, after.0, "size unchanged");
    assert_eq!(before.1, after.1, "same object");
    assert_eq!(before.3, after.3, "content unchanged");
}

#[test]
fn existing_smaller_object_is_refused_and_left_exactly_as_it_was() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-small");
    fs::write(shm.path(), vec![7u8; 1 << 20]).unwrap();
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o640)).unwrap();
    let before = fingerprint(&shm.path());
    let out = hello(&["--shm", &shm.0, "--size", "4M"]);
    one_error_line(&out, "is 1M but 4M was requested");
    assert_eq!(out.code(), 1);
    assert_eq!(fingerprint(&shm.path()), before);
    let mode = fs::metadata(shm.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "permissions untouched");
}

#[test]
fn failed_start_removes_the_object_it_created() {
    if !require_kvm() {
        return;
    }
    let created = ShmGuard::new("ivt-created");
    let small = ShmGuard::new("ivt-small2");
    fs::write(small.path(), vec![1u8; 4096]).unwrap();
    let spec = format!("shm={},size=1M", small.0);
    // The first device is created, then the second one is refused.
    let out = hello(&["--shm", &created.0, "--ivshmem", &spec]);
    one_error_line(&out, "was requested");
    assert!(
        !created.path().exists(),
        "a failed start left {} behind",
        created.path().display()
    );
    assert_eq!(fs::metadata(small.path()).unwrap().len(), 4096);
}

#[test]
fn another_bad_flag_leaves_no_object_behind() {
    if !require_kvm() {
        return;
    }
    let created = ShmGuard::new("ivt-created2");
    let k = testguest(false);
    // The device is fine but the initrd is missing: nothing may remain.
    let out = run_ivvmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            "/nonexistent",
            "--shm",
            &created.0,
        ],
        Duration::from_secs(30),
    );
    one_error_line(&out, "/nonexistent");
    assert!(!created.path().exists());
}

#[test]
fn file_backing_follows_the_same_rules() {
    if !require_kvm() {
        return;
    }
    let path = std::env::temp_dir().join(unique("ivt-file"));
    let p = path.to_str().unwrap().to_string();
    let out = hello(&["--shm-path", &p, "--size", "64K"]);
    assert!(out.passed(), "{out:?}");
    let m = fs::metadata(&path).unwrap();
    assert_eq!((m.len(), m.permissions().mode() & 0o777), (64 << 10, 0o600));
    let out = hello(&["--shm-path", &p, "--size", "1M"]);
    one_error_line(&out, "was requested");
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
    let _ = fs::remove_file(&path);
}

#[test]
fn bad_names_and_paths_are_refused_and_create_nothing() {
    if !require_kvm() {
        return;
    }
    let long = "x".repeat(300);
    for (args, needle) in [
        (vec!["--shm", "a/b"], "invalid"),
        (vec!["--shm", long.as_str()], "invalid"),
        (vec!["--shm", ".."], "invalid"),
        (vec!["--shm-path", "/nonexistent-dir/x"], "does not exist"),
    ] {
        let out = hello(&args);
        one_error_line(&out, needle);
    }
    assert!(!Path::new("/nonexistent-dir").exists());
}

#[test]
fn size_the_host_cannot_map_is_refused_and_nothing_remains() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-huge");
    let out = hello(&["--shm", &shm.0, "--size", "65536T"]);
    assert_ne!(out.code(), 0, "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(!shm.path().exists(), "nothing left behind");
}

#[test]
fn read_only_directory_is_refused() {
    if !require_kvm() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("ivt-ro"));
    fs::create_dir_all(&dir).unwrap();
    let k = testguest(false);
    // A read-only tmpfs over the directory, in a private mount namespace
    // (root can write anywhere a mode bit would forbid).
    let script = format!(
        "mount -t tmpfs -o ro none {d} && exec {b} --kernel {k} --cmdline test=hello --shm-path {d}/f",
        d = dir.display(),
        b = ivvmm(),
        k = k.display()
    );
    let out = run_in_private_mounts(&script, Duration::from_secs(30));
    one_error_line(&out, "not writable");
    let _ = fs::remove_dir(&dir);
}

#[test]
fn hugetlbfs_size_must_be_a_multiple_of_the_huge_page() {
    if !require_kvm() {
        return;
    }
    let fs_list = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs_list.contains("hugetlbfs") {
        skipped("this kernel has no hugetlbfs");
        return;
    }
    let dir = std::env::temp_dir().join(unique("ivt-huge"));
    fs::create_dir_all(&dir).unwrap();
    let k = testguest(false);
    let script = format!(
        "mount -t hugetlbfs none {d} && exec {b} --kernel {k} --cmdline test=hello --shm-path {d}/f --size 4K",
        d = dir.display(),
        b = ivvmm(),
        k = k.display()
    );
    let out = run_in_private_mounts(&script, Duration::from_secs(30));
    one_error_line(&out, "multiple of");
    let _ = fs::remove_dir(&dir);
}
