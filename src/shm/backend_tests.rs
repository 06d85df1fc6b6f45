// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Unit tests for the shared-memory backends: one test per rule, and for every
//! refusal a check that the object was left exactly as it was.

use super::*;
use crate::shm::Trust;
use nix::sys::statfs::statfs;
use nix::unistd::ftruncate;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::atomic::{AtomicUsize, Ordering};

const MIB: u64 = 1 << 20;

fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("ivvmm-test-{tag}-{}-{n}", std::process::id())
}

/// A scratch directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(tag));
        fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Removes /dev/shm/NAME at the end of a test whatever happened.
struct ShmGuard(PathBuf);

impl ShmGuard {
    fn new(name: &str) -> Self {
        ShmGuard(Path::new(SHM_DIR).join(name))
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// (size, mtime, mtime_nsec, ino, mode) — what a refused open must not change.
fn fingerprint(path: &Path) -> (u64, i64, i64, u64, u32) {
    let m = fs::metadata(path).expect("metadata");
    (m.size(), m.mtime(), m.mtime_nsec(), m.ino(), m.mode())
}

fn make_file(path: &Path, size: u64, fill: u8) {
    let mut f = fs::File::create(path).expect("create");
    f.write_all(&vec![fill; size as usize]).expect("fill");
}

#[test]
fn shm_names_follow_posix_rules() {
    assert_eq!(validate_shm_name("ivshmem").unwrap(), "ivshmem");
    assert_eq!(validate_shm_name("/ivshmem").unwrap(), "ivshmem");
    assert!(validate_shm_name(&"a".repeat(255)).is_ok());
    for bad in ["", "/", "a/b", "/a/b", "//a", ".", "..", "/..", "a\0b"] {
        let e = validate_shm_name(bad).unwrap_err();
        assert!(matches!(e, ShmError::InvalidName { .. }), "{bad:?}: {e}");
    }
    let e = validate_shm_name(&"a".repeat(256)).unwrap_err();
    assert!(e.to_string().contains("255"), "{e}");
}

#[test]
fn absent_name_is_created_0600_sized_and_removed_on_drop() {
    let name = unique("create");
    let _g = ShmGuard::new(&name);
    let path = Path::new(SHM_DIR).join(&name);
    let backend = ShmBackend::open_name(&name, 2 * MIB).unwrap();
    assert!(backend.will_remove());
    assert_eq!(backend.size(), 2 * MIB);
    let m = fs::metadata(&path).unwrap();
    assert_eq!(m.len(), 2 * MIB);
    assert_eq!(m.mode() & 0o777, 0o600);
    drop(backend);
    assert!(
        !path.exists(),
        "a created object must go away without keep()"
    );
}

#[test]
fn kept_object_survives_drop() {
    let name = unique("keep");
    let _g = ShmGuard::new(&name);
    let mut backend = ShmBackend::open_name(&format!("/{name}"), MIB).unwrap();
    backend.keep();
    assert!(!backend.will_remove());
    drop(backend);
    assert_eq!(
        fs::metadata(Path::new(SHM_DIR).join(&name)).unwrap().len(),
        MIB
    );
}

#[test]
fn existing_larger_object_is_used_as_is_never_truncated() {
    let name = unique("larger");
    let _g = ShmGuard::new(&name);
    let path = Path::new(SHM_DIR).join(&name);
    make_file(&path, 2 * MIB, 0xab);
    let before = fingerprint(&path);
    let backend = ShmBackend::open_name(&name, MIB).unwrap();
    assert!(!backend.will_remove());
    assert_eq!(backend.size(), MIB);
    assert_eq!(backend.object_size(), 2 * MIB);
    let map = backend.map().unwrap();
    assert_eq!(map.len() as u64, MIB);
    let mut b = [0u8; 4];
    map.read(0, &mut b).unwrap();
    assert_eq!(b, [0xab; 4], "existing contents are kept");
    drop(map);
    drop(backend);
    assert_eq!(
        fingerprint(&path),
        before,
        "existing object must not change"
    );
}

#[test]
fn existing_smaller_object_is_refused_and_left_unchanged() {
    let name = unique("smaller");
    let _g = ShmGuard::new(&name);
    let path = Path::new(SHM_DIR).join(&name);
    make_file(&path, MIB, 0x5a);
    let before = fingerprint(&path);
    let e = ShmBackend::open_name(&name, 4 * MIB).unwrap_err();
    assert!(matches!(e, ShmError::TooSmall { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("is 1M") && text.contains("4M"), "{text}");
    assert!(text.contains("left unchanged"), "{text}");
    assert_eq!(fingerprint(&path), before);
    assert!(fs::read(&path).unwrap().iter().all(|&b| b == 0x5a));
}

#[test]
fn path_backend_creates_uses_and_refuses_like_names() {
    let dir = TempDir::new("path");
    let path = dir.0.join("shm");
    let backend = ShmBackend::open_path(&path, MIB).unwrap();
    assert!(backend.will_remove());
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(&path).unwrap().len(), MIB);
    drop(backend);
    assert!(!path.exists());

    make_file(&path, MIB, 1);
    let before = fingerprint(&path);
    let e = ShmBackend::open_path(&path, 2 * MIB).unwrap_err();
    assert!(matches!(e, ShmError::TooSmall { .. }), "{e}");
    assert_eq!(fingerprint(&path), before);
    let backend = ShmBackend::open_path(&path, 64 * 1024).unwrap();
    assert!(!backend.will_remove());
    drop(backend);
    assert_eq!(fingerprint(&path), before, "never removed, never resized");
}

#[test]
fn path_in_missing_directory_names_the_directory() {
    let dir = TempDir::new("nodir");
    let missing = dir.0.join("no/such");
    let e = ShmBackend::open_path(&missing.join("shm"), MIB).unwrap_err();
    assert!(matches!(e, ShmError::NoDirectory { .. }), "{e}");
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert!(!missing.exists());
}

/// A directory we cannot create files in: as root permissions are bypassed,
/// so use sysfs, which refuses new files to everyone.
fn unwritable_dir() -> (PathBuf, Option<TempDir>) {
    if nix::unistd::geteuid().is_root() {
        (PathBuf::from("/sys"), None)
    } else {
        let dir = TempDir::new("ro");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o500)).unwrap();
        (dir.0.clone(), Some(dir))
    }
}

#[test]
fn read_only_directory_is_a_clear_error() {
    let (dir, _keep) = unwritable_dir();
    let e = ShmBackend::open_path(&dir.join(unique("ro")), MIB).unwrap_err();
    assert!(matches!(e, ShmError::NotWritable { .. }), "{e}");
    assert!(e.to_string().contains("not writable"), "{e}");
    let e = ShmBackend::create_in_dir(&dir, MIB).unwrap_err();
    assert!(matches!(e, ShmError::NotWritable { .. }), "{e}");
}

#[test]
fn non_regular_file_is_refused_untouched() {
    let dir = TempDir::new("fifo");
    let fifo = dir.0.join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let before = fingerprint(&fifo);
    let e = ShmBackend::open_path(&fifo, MIB).unwrap_err();
    assert!(matches!(e, ShmError::NotRegularFile { .. }), "{e}");
    assert_eq!(fingerprint(&fifo), before);
}

#[test]
fn dir_backend_leaves_nothing_in_the_directory() {
    let dir = TempDir::new("dir");
    let backend = ShmBackend::create_in_dir(&dir.0, 2 * MIB).unwrap();
    assert_eq!(backend.size(), 2 * MIB);
    assert_eq!(backend.file().metadata().unwrap().len(), 2 * MIB);
    assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 0);
    let e = ShmBackend::create_in_dir(&dir.0.join("missing"), MIB).unwrap_err();
    assert!(matches!(e, ShmError::NoDirectory { .. }), "{e}");
}

#[test]
fn memfd_is_sized_and_sealed_against_shrinking() {
    let backend = ShmBackend::memfd(4 * MIB, true).unwrap();
    let f = backend.file();
    assert_eq!(f.metadata().unwrap().len(), 4 * MIB);
    assert_eq!(ftruncate(f, MIB as i64), Err(Errno::EPERM));
    let seals = fcntl(f, FcntlArg::F_GET_SEALS).unwrap();
    assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
    let link = fs::read_link(format!("/proc/self/fd/{}", backend.as_raw_fd())).unwrap();
    assert!(link.to_string_lossy().starts_with("/memfd:"), "{link:?}");
    let unsealed = ShmBackend::memfd(MIB, false).unwrap();
    assert_eq!(ftruncate(unsealed.file(), 4096), Ok(()));
}

#[test]
fn received_fd_takes_its_size_from_fstat() {
    let source = ShmBackend::memfd(MIB, true).unwrap();
    let fd = source.file().try_clone().unwrap();
    let backend = ShmBackend::from_fd(fd.into()).unwrap();
    assert_eq!(backend.size(), MIB);
    let empty = memfd_create("empty", MFdFlags::MFD_CLOEXEC).unwrap();
    assert!(matches!(ShmBackend::from_fd(empty), Err(ShmError::Empty)));
    let (r, _w) = nix::unistd::pipe().unwrap();
    let e = ShmBackend::from_fd(r).unwrap_err();
    assert!(matches!(e, ShmError::NotRegularFile { .. }), "{e}");
}

#[test]
fn mapping_is_shared_and_bounds_checked() {
    let backend = ShmBackend::memfd(MIB, true).unwrap();
    let map = backend.map().unwrap();
    map.write(4096, b"hello").unwrap();
    map.write_u32(64, 0x4750_4e4f).unwrap();
    let mut f = backend.file().try_clone().unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    let mut buf = [0u8; 5];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let other = backend.map().unwrap();
    assert_eq!(other.read_u32(64), Some(0x4750_4e4f));
    let mut bytes = [0u8; 4];
    other.read(64, &mut bytes).unwrap();
    assert_eq!(&bytes, b"ONPG", "u32 values are little-endian in memory");
    let len = map.len();
    assert!(map.write(len - 2, b"abc").is_none());
    assert!(map.read(usize::MAX, &mut [0u8; 2]).is_none());
    assert!(map.read_u32(len).is_none());
    assert!(map.read_u32(2).is_none(), "unaligned");
    assert!(map.write(len - 3, b"abc").is_some());
}

#[test]
fn large_sparse_memfd_maps() {
    let backend = ShmBackend::memfd(8 << 30, true).unwrap();
    let map = backend.map().unwrap();
    map.write_u32((8 << 30) - 4, 7).unwrap();
    assert_eq!(map.read_u32((8 << 30) - 4), Some(7));
}

#[test]
fn unmappable_size_is_a_clear_error_and_cleans_up() {
    // 2^47 bytes exceed the x86_64 user address space (128 TiB).
    let name = unique("huge");
    let _g = ShmGuard::new(&name);
    let path = Path::new(SHM_DIR).join(&name);
    let backend = ShmBackend::open_name(&name, 1 << 47).unwrap();
    let e = backend.map().unwrap_err();
    assert!(matches!(e, ShmError::Map { .. }), "{e}");
    assert!(e.to_string().contains("smaller size"), "{e}");
    drop(backend);
    assert!(
        !path.exists(),
        "start-up failed: the created object must go"
    );
}

#[test]
fn sizes_outside_the_usable_range_are_refused_before_creating() {
    let name = unique("badsize");
    let _g = ShmGuard::new(&name);
    assert!(matches!(
        ShmBackend::open_name(&name, 100),
        Err(ShmError::BadSize(100))
    ));
    assert!(matches!(
        ShmBackend::memfd(u64::MAX, true),
        Err(ShmError::BadSize(_))
    ));
    assert!(!Path::new(SHM_DIR).join(&name).exists());
}

/// hugetlbfs needs a mount; tests use `IVVMM_TEST_HUGETLBFS` or /dev/hugepages.
fn hugetlbfs_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("IVVMM_TEST_HUGETLBFS").map(PathBuf::from),
        Some(PathBuf::from("/dev/hugepages")),
    ];
    for dir in candidates.into_iter().flatten() {
        if statfs(&dir).is_ok_and(|s| s.filesystem_type() == HUGETLBFS_MAGIC) {
            return Some(dir);
        }
    }
    eprintln!(
        "SKIPPED: no hugetlbfs mount found (set IVVMM_TEST_HUGETLBFS=DIR or mount \
         /dev/hugepages); hugetlbfs rules NOT tested"
    );
    None
}

#[test]
fn hugetlbfs_size_must_be_a_page_multiple() {
    let Some(dir) = hugetlbfs_dir() else { return };
    let page = statfs(&dir).unwrap().block_size() as u64;
    let path = dir.join(unique("huge"));
    let e = ShmBackend::open_path(&path, page / 2).unwrap_err();
    assert!(matches!(e, ShmError::HugePageMultiple { .. }), "{e}");
    assert!(!path.exists());
    let e = ShmBackend::create_in_dir(&dir, page + 4096).unwrap_err();
    assert!(matches!(e, ShmError::HugePageMultiple { .. }), "{e}");
    let unlinked = ShmBackend::create_in_dir(&dir, page).unwrap();
    assert!(unlinked.is_hugetlbfs());
    assert_eq!(unlinked.file().metadata().unwrap().len(), page);
    drop(unlinked);
    let backend = ShmBackend::open_path(&path, page).unwrap();
    assert!(backend.is_hugetlbfs());
    // Mapping needs free huge pages; without them the error says so.
    if let Err(e) = backend.map() {
        assert!(e.to_string().contains("huge pages"), "{e}");
    }
    drop(backend);
    assert!(!path.exists());
}

/// Gives `path` to `nobody` (needs root; false where we cannot).
fn give_to_nobody(path: &Path) -> bool {
    nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok()
}

#[test]
fn foreign_object_is_refused_untouched_unless_shared_on_purpose() {
    let name = unique("foreign");
    let _g = ShmGuard::new(&name);
    let path = Path::new(SHM_DIR).join(&name);
    make_file(&path, MIB, 3);
    if !give_to_nobody(&path) {
        eprintln!("skipped: only root can give a file to another user");
        return;
    }
    let before = fingerprint(&path);
    let e = ShmBackend::open_name(&name, MIB).unwrap_err();
    assert!(matches!(e, ShmError::Foreign { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("uid 65534"), "{text}");
    assert!(text.contains("--shm-shared"), "{text}");
    assert_eq!(fingerprint(&path), before);
    let shared = ShmSource::Name(name.clone());
    let backend = ShmBackend::open_with(&shared, MIB, Trust::Shared).unwrap();
    assert!(!backend.will_remove());
    drop(backend);
    assert_eq!(fingerprint(&path), before);
}

#[test]
fn world_writable_object_is_refused_but_group_access_is_fine() {
    let dir = TempDir::new("ww");
    let path = dir.0.join("shm");
    make_file(&path, MIB, 4);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    let before = fingerprint(&path);
    let e = ShmBackend::open_path(&path, MIB).unwrap_err();
    assert!(matches!(e, ShmError::WorldWritable { .. }), "{e}");
    assert!(e.to_string().contains("0666"), "{e}");
    assert_eq!(fingerprint(&path), before);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    ShmBackend::open_path(&path, MIB).expect("0660 is the owner's choice");
}

#[test]
fn symlinked_path_is_never_followed() {
    let dir = TempDir::new("link");
    let target = dir.0.join("target");
    make_file(&target, MIB, 5);
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let before = fingerprint(&target);
    let e = ShmBackend::open_path(&link, MIB).unwrap_err();
    assert!(matches!(e, ShmError::Symlink { .. }), "{e}");
    assert_eq!(fingerprint(&target), before);
    // A dangling one is not created through either.
    let dangling = dir.0.join("dangling");
    std::os::unix::fs::symlink(dir.0.join("nowhere"), &dangling).unwrap();
    let e = ShmBackend::open_path(&dangling, MIB).unwrap_err();
    assert!(matches!(e, ShmError::Symlink { .. }), "{e}");
    assert!(!dir.0.join("nowhere").exists());
}

#[test]
fn directory_others_may_write_is_refused_unless_sticky() {
    let dir = TempDir::new("open");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.0.join("shm");
    let e = ShmBackend::open_path(&path, MIB).unwrap_err();
    assert!(matches!(e, ShmError::OpenDirectory { .. }), "{e}");
    assert!(e.to_string().contains("chmod +t"), "{e}");
    assert!(!path.exists(), "nothing created");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o1777)).unwrap();
    ShmBackend::open_path(&path, MIB).expect("a sticky directory is fine");
}

#[test]
fn empty_object_is_grown_keeping_owner_and_mode() {
    let dir = TempDir::new("empty");
    let path = dir.0.join("looking-glass");
    fs::File::create(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o660)).unwrap();
    let before = fs::metadata(&path).unwrap();
    let backend = ShmBackend::open_path(&path, 2 * MIB).unwrap();
    assert_eq!(backend.object_size(), 2 * MIB);
    assert!(!backend.will_remove(), "not ours to remove");
    drop(backend);
    let after = fs::metadata(&path).unwrap();
    assert_eq!(after.len(), 2 * MIB);
    assert_eq!(after.mode(), before.mode());
    assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    assert_eq!(after.ino(), before.ino());
}
