// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Host shared memory, used by the ivshmem device, the server and the host
//! client alike. Backends: a POSIX shm name, a memfd, a file path (tmpfs or
//! hugetlbfs), an unlinked file in a directory, or an fd a server sent us.
//!
//! The rules every backend follows:
//! - an object that does not exist is created exclusively (mode 0600) and
//!   sized; one that exists is used as it is, **never truncated**, and refused
//!   (untouched) when it is smaller than asked for — except an empty one,
//!   which is grown to the size asked for (what `systemd-tmpfiles` leaves for
//!   Looking Glass), its owner and mode kept;
//! - an existing object is used only if it is a regular file owned by our
//!   effective uid and not writable by others ([`Trust::Ours`]); anything
//!   else is refused untouched unless the user said it is shared on purpose
//!   ([`Trust::Shared`]);
//! - a path is never followed through a symlink in its last component, and
//!   its directory must not be writable by others unless sticky;
//! - an object we created is removed again when the [`ShmBackend`] is dropped,
//!   unless its owner called [`ShmBackend::keep`] once start-up succeeded, so
//!   a failed start leaves nothing behind;
//! - on hugetlbfs the size must be a multiple of the huge page size.
//!
//! [`ShmBackend::map`] gives a `MAP_SHARED` read/write [`ShmMapping`] of
//! exactly the requested size; the VMM hands its address to KVM.

mod backend;
mod files;
mod mapping;
mod truncation;

pub use backend::{ShmBackend, ShmSource, SHM_DIR};
pub use files::{describe_uid, validate_shm_name};
pub use mapping::ShmMapping;
pub use truncation::survive_truncation;

/// What makes two servers' memory the same object: device, inode, size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

use std::path::PathBuf;

use nix::errno::Errno;
use thiserror::Error;

/// Whose existing object we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Trust {
    /// Ours alone: owned by our effective uid and not writable by others.
    #[default]
    Ours,
    /// Shared on purpose (`--shm-shared`, `shared=on`): any owner and mode.
    Shared,
}

impl Trust {
    /// `Shared` when the user said the object is shared on purpose.
    pub fn shared_if(on_purpose: bool) -> Trust {
        if on_purpose {
            Trust::Shared
        } else {
            Trust::Ours
        }
    }
}

/// Why shared memory could not be provided. Each text is the one line the
/// user reads: the problem and the fix.
#[derive(Debug, Error)]
pub enum ShmError {
    #[error("shared memory name '{name}' is invalid: {reason}; use a plain name such as 'ivshmem' (one optional leading '/')")]
    InvalidName { name: String, reason: &'static str },
    #[error(
        "size {0} bytes is not usable for shared memory: give a size between 4K and 2^62 bytes"
    )]
    BadSize(u64),
    #[error("shared memory object {what} is {actual} but {wanted} was requested: ask for {actual} (or less) or use a new name or path; the object was left unchanged")]
    TooSmall {
        what: String,
        actual: String,
        wanted: String,
    },
    #[error("{what} is not a regular file: give a file on tmpfs or hugetlbfs, or a new name; it was left unchanged")]
    NotRegularFile { what: String },
    #[error(
        "{what} is on hugetlbfs with {page} pages but the size is {size}: use a multiple of {page}"
    )]
    HugePageMultiple {
        what: String,
        page: String,
        size: String,
    },
    #[error("directory {dir} does not exist: create it (for huge pages: mount -t hugetlbfs none {dir}) or choose another path")]
    NoDirectory { dir: PathBuf },
    #[error("cannot create {what}: {dir} is not writable ({errno}); choose a writable directory or fix its permissions")]
    NotWritable {
        what: String,
        dir: PathBuf,
        errno: Errno,
    },
    #[error("{what} belongs to {owner} with mode {mode:04o}, not to us ({me}): whoever owns it can read and write this shared memory; remove it or use another name or path, or, if it is shared with that user on purpose, pass --shm-shared (shared=on in --ivshmem); it was left unchanged")]
    Foreign {
        what: String,
        owner: String,
        mode: u32,
        me: String,
    },
    #[error("{what}, owned by {owner}, is writable by every user (mode {mode:04o}): anyone could read and write this shared memory; chmod o-w it, or, if that is on purpose, pass --shm-shared (shared=on in --ivshmem); it was left unchanged")]
    WorldWritable {
        what: String,
        owner: String,
        mode: u32,
    },
    #[error("{what} is a symbolic link, and shared memory paths are never followed through one: give the path of the file itself; it was left unchanged")]
    Symlink { what: String },
    #[error("{dir} is writable by every user and not sticky (mode {mode:04o}): another user could replace {what} there; use a directory only you can write, or make it sticky (chmod +t {dir})")]
    OpenDirectory {
        what: String,
        dir: PathBuf,
        mode: u32,
    },
    #[error("cannot open {what} for reading and writing ({errno}); fix its permissions or use a new name; it was left unchanged")]
    OpenExisting { what: String, errno: Errno },
    #[error("cannot create {what} ({errno}); check that the directory exists and is writable")]
    Create { what: String, errno: Errno },
    #[error("cannot set the size of {what} to {size} ({errno}); free space on that filesystem or use a smaller size; nothing was left behind")]
    Resize {
        what: String,
        size: String,
        errno: Errno,
    },
    #[error("cannot inspect {what} ({errno}); is it a file or shared memory object?")]
    Stat { what: String, errno: Errno },
    #[error("cannot seal {what} against shrinking ({errno}); this kernel may lack memfd sealing")]
    Seal { what: String, errno: Errno },
    #[error("the shared memory from the server is empty: the server is misconfigured; restart it with a size such as -l 4M")]
    Empty,
    #[error("cannot map {size} of shared memory {what} ({errno}); {hint}")]
    Map {
        what: String,
        size: String,
        errno: Errno,
        hint: &'static str,
    },
}
