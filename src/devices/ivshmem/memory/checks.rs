// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The checks and small filesystem helpers behind the backends: names, sizes,
//! hugetlbfs page multiples, and turning errnos into the errors users read.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::stat::{fstat, stat, FileStat, SFlag};
use nix::sys::statfs::{statfs, HUGETLBFS_MAGIC};
use nix::unistd::ftruncate;

use super::{MemoryError, NAME_MAX};
use crate::cli::size::format_size;

/// Checks a POSIX shm name and returns it without its leading '/'.
pub fn validate_shm_name(name: &str) -> Result<&str, MemoryError> {
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
        Some(reason) => Err(MemoryError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(bare),
    }
}

pub(super) fn check_size(size: u64) -> Result<(), MemoryError> {
    // off_t is signed; 2^62 leaves room for every offset computation.
    if !(4096..=1 << 62).contains(&size) {
        return Err(MemoryError::BadSize(size));
    }
    Ok(())
}

pub(super) fn resize(fd: impl AsFd, size: u64, what: &str) -> Result<(), MemoryError> {
    let len = i64::try_from(size).map_err(|_| MemoryError::BadSize(size))?;
    ftruncate(fd, len).map_err(|errno| MemoryError::Resize {
        what: what.to_string(),
        size: format_size(size),
        errno,
    })
}

pub(super) fn fstat_of(fd: impl AsFd, what: &str) -> Result<FileStat, MemoryError> {
    fstat(fd).map_err(|errno| MemoryError::Stat {
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

/// The huge page size if `dir` is on hugetlbfs (and `size` fits it).
pub(super) fn hugetlbfs_page(
    dir: &Path,
    what: &str,
    size: u64,
) -> Result<Option<u64>, MemoryError> {
    let fs = match statfs(dir) {
        Ok(fs) => fs,
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            return Err(MemoryError::NoDirectory {
                dir: dir.to_path_buf(),
            })
        }
        Err(errno) => {
            return Err(MemoryError::Stat {
                what: dir.display().to_string(),
                errno,
            })
        }
    };
    if fs.filesystem_type() != HUGETLBFS_MAGIC {
        return Ok(None);
    }
    #[allow(clippy::unnecessary_cast)] // the field's type differs by libc
    let page = (fs.block_size() as u64).max(1);
    if size % page != 0 {
        return Err(MemoryError::HugePageMultiple {
            what: what.to_string(),
            page: format_size(page),
            size: format_size(size),
        });
    }
    Ok(Some(page))
}

pub(super) fn dir_error(dir: &Path, what: &str, errno: Errno) -> MemoryError {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => MemoryError::NoDirectory {
            dir: dir.to_path_buf(),
        },
        Errno::EACCES | Errno::EPERM | Errno::EROFS => MemoryError::NotWritable {
            what: what.to_string(),
            dir: dir.to_path_buf(),
            errno,
        },
        errno => MemoryError::Create {
            what: what.to_string(),
            errno,
        },
    }
}
