// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The checks and small filesystem helpers behind the backends: names, sizes,
//! hugetlbfs page multiples, who owns an existing object and who may write
//! it, and turning errnos into the errors users read.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{fstat, stat, FileStat, SFlag};
use nix::sys::statfs::{statfs, HUGETLBFS_MAGIC};
use nix::unistd::{ftruncate, geteuid, Uid, User};

use super::{ShmError, Trust};
use crate::config::size::format_size;

/// Longest shm name, without the leading '/' (NAME_MAX).
const NAME_MAX: usize = 255;

/// Checks a POSIX shm name and returns it without its leading '/'.
pub fn validate_shm_name(name: &str) -> Result<&str, ShmError> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let reason = if bare.is_empty() {
        Some("it is empty")
    } else if bare.contains('/') {
        Some("it contains '/' after the first character")
    } else if bare == "." || bare == ".." {
        Some("'.' and '..' are not object names")
    } else if bare.len() > NAME_MAX {
        Some("it is longer than 255 bytes")
    } else if bare.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ShmError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(bare),
    }
}

pub(super) fn check_size(size: u64) -> Result<(), ShmError> {
    // off_t is signed; 2^62 leaves room for every offset computation.
    if !(4096..=1 << 62).contains(&size) {
        return Err(ShmError::BadSize(size));
    }
    Ok(())
}

pub(super) fn resize(fd: impl AsFd, size: u64, what: &str) -> Result<(), ShmError> {
    let len = i64::try_from(size).map_err(|_| ShmError::BadSize(size))?;
    ftruncate(fd, len).map_err(|errno| ShmError::Resize {
        what: what.to_string(),
        size: format_size(size),
        errno,
    })
}

pub(super) fn fstat_of(fd: impl AsFd, what: &str) -> Result<FileStat, ShmError> {
    fstat(fd).map_err(|errno| ShmError::Stat {
        what: what.to_string(),
        errno,
    })
}

pub(super) fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

pub(super) fn same_inode(path: &Path, dev: u64, ino: u64) -> bool {
    stat(path).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

pub(super) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Why a directory could not be looked at: it is not there, or stat failed.
fn dir_stat_error(dir: &Path, errno: Errno) -> ShmError {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => ShmError::NoDirectory {
            dir: dir.to_path_buf(),
        },
        errno => ShmError::Stat {
            what: dir.display().to_string(),
            errno,
        },
    }
}

/// The huge page size if `dir` is on hugetlbfs (and `size` fits it).
pub(super) fn hugetlbfs_page(dir: &Path, what: &str, size: u64) -> Result<Option<u64>, ShmError> {
    let fs = match statfs(dir) {
        Ok(fs) => fs,
        Err(errno) => return Err(dir_stat_error(dir, errno)),
    };
    if fs.filesystem_type() != HUGETLBFS_MAGIC {
        return Ok(None);
    }
    #[allow(clippy::unnecessary_cast)] // the field's type differs by libc
    let page = (fs.block_size() as u64).max(1);
    if size % page != 0 {
        return Err(ShmError::HugePageMultiple {
            what: what.to_string(),
            page: format_size(page),
            size: format_size(size),
        });
    }
    Ok(Some(page))
}

pub(super) fn dir_error(dir: &Path, what: &str, errno: Errno) -> ShmError {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => ShmError::NoDirectory {
            dir: dir.to_path_buf(),
        },
        Errno::EACCES | Errno::EPERM | Errno::EROFS => ShmError::NotWritable {
            what: what.to_string(),
            dir: dir.to_path_buf(),
            errno,
        },
        errno => ShmError::Create {
            what: what.to_string(),
            errno,
        },
    }
}

/// `uid 1000 (alice)`, or `uid 1234` when the user database has no name.
pub fn describe_uid(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// An existing object may be used if it is ours alone: owned by our
/// effective uid and not writable by others (group access is the owner's
/// choice and stays). `Trust::Shared` accepts any owner and mode.
pub(super) fn check_trusted(st: &FileStat, what: &str, trust: Trust) -> Result<(), ShmError> {
    if trust == Trust::Shared {
        return Ok(());
    }
    let me = geteuid().as_raw();
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me {
        return Err(ShmError::Foreign {
            what: what.to_string(),
            owner: describe_uid(st.st_uid),
            mode,
            me: describe_uid(me),
        });
    }
    if mode & 0o002 != 0 {
        return Err(ShmError::WorldWritable {
            what: what.to_string(),
            owner: describe_uid(st.st_uid),
            mode,
        });
    }
    Ok(())
}

/// The directory of a `--shm-path` file must not let others replace the
/// file: not writable by others, unless sticky (like /dev/shm and /tmp,
/// where only a file's owner may remove or rename it).
pub(super) fn check_parent(dir: &Path, what: &str) -> Result<(), ShmError> {
    let st = match stat(dir) {
        Ok(st) => st,
        Err(errno) => return Err(dir_stat_error(dir, errno)),
    };
    let mode = st.st_mode & 0o7777;
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(ShmError::OpenDirectory {
            what: what.to_string(),
            dir: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}
