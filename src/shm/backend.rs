// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`ShmBackend`]: opening, creating, sizing and removing the object behind
//! one region, by the rules in the module docs.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::sys::statfs::{fstatfs, HUGETLBFS_MAGIC};
use nix::unistd::{mkstemp, unlink};

use crate::config::size::format_size;

use super::files::{
    check_parent, check_size, check_trusted, dir_error, fstat_of, hugetlbfs_page, is_regular,
    parent_dir, resize, same_inode,
};
use super::{validate_shm_name, ShmError, ShmIdentity, ShmMapping, Trust};

/// Where POSIX shm names live on Linux (glibc's `shm_open` uses it).
pub const SHM_DIR: &str = "/dev/shm";
/// The name memfds carry in /proc/PID/fd (visible to `ls -l`, handy to debug).
const MEMFD_NAME: &str = "ivvmm-ivshmem";

/// Which kind of object backs the shared memory (and how to name it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShmSource {
    /// A POSIX shared memory object, `shm_open(NAME)`, i.e. /dev/shm/NAME.
    Name(String),
    /// A file at this path (tmpfs, hugetlbfs, ...).
    Path(PathBuf),
    /// An unlinked file in this directory (e.g. a hugetlbfs mount).
    Dir(PathBuf),
    /// An anonymous memfd, sealed against shrinking.
    Memfd,
}

impl fmt::Display for ShmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShmSource::Name(name) => write!(f, "{SHM_DIR}/{}", name.trim_start_matches('/')),
            ShmSource::Path(path) => write!(f, "{}", path.display()),
            ShmSource::Dir(dir) => write!(f, "an unlinked file in {}", dir.display()),
            ShmSource::Memfd => write!(f, "memfd"),
        }
    }
}

/// What we created and must remove again unless the owner keeps it.
#[derive(Debug)]
enum Created {
    Shm { name: String, dev: u64, ino: u64 },
    File { path: PathBuf, dev: u64, ino: u64 },
}

/// An open shared-memory object of at least `size` bytes.
#[derive(Debug)]
pub struct ShmBackend {
    file: File,
    size: u64,
    object_size: u64,
    what: String,
    hugetlbfs: bool,
    created: Option<Created>,
}

impl ShmBackend {
    /// Opens or creates the object `source` names with at least `size` bytes;
    /// an existing object is accepted as `trust` says.
    pub fn open_with(source: &ShmSource, size: u64, trust: Trust) -> Result<Self, ShmError> {
        match source {
            ShmSource::Name(name) => Self::name_with(name, size, trust),
            ShmSource::Path(path) => Self::path_with(path, size, trust),
            ShmSource::Dir(dir) => Self::create_in_dir(dir, size),
            ShmSource::Memfd => Self::memfd(size, true),
        }
    }

    /// Opens POSIX shm object `name` (/dev/shm/NAME), creating it if absent
    /// (an existing one must be ours alone).
    #[cfg(test)]
    pub fn open_name(name: &str, size: u64) -> Result<Self, ShmError> {
        Self::name_with(name, size, Trust::Ours)
    }

    fn name_with(name: &str, size: u64, trust: Trust) -> Result<Self, ShmError> {
        let bare = validate_shm_name(name)?;
        check_size(size)?;
        let shm_name = format!("/{bare}");
        let what = format!("{SHM_DIR}/{bare}");
        // A concurrent unlink between our two opens makes us try again; twice
        // is enough to tell a race from a persistent problem.
        for _ in 0..3 {
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
            match shm_open(shm_name.as_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR) {
                Ok(fd) => {
                    let st = fstat_of(&fd, &what)?;
                    let created = Created::Shm {
                        name: shm_name.clone(),
                        dev: st.st_dev,
                        ino: st.st_ino,
                    };
                    return Self::finish_created(fd, size, what, false, created);
                }
                Err(Errno::EEXIST) => {}
                Err(errno) => return Err(ShmError::Create { what, errno }),
            }
            // glibc adds O_NOFOLLOW: a symlink in /dev/shm is never followed.
            let flags = OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
            match shm_open(shm_name.as_str(), flags, Mode::empty()) {
                Ok(fd) => return Self::finish_existing(fd, size, what, trust),
                Err(Errno::ELOOP) => return Err(ShmError::Symlink { what }),
                Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(ShmError::OpenExisting { what, errno }),
            }
        }
        Err(ShmError::Create {
            what,
            errno: Errno::EAGAIN,
        })
    }

    /// Opens the file at `path`, creating it if absent (tmpfs, hugetlbfs...;
    /// an existing one must be ours alone).
    #[cfg(test)]
    pub fn open_path(path: &Path, size: u64) -> Result<Self, ShmError> {
        Self::path_with(path, size, Trust::Ours)
    }

    fn path_with(path: &Path, size: u64, trust: Trust) -> Result<Self, ShmError> {
        check_size(size)?;
        let what = path.display().to_string();
        let dir = parent_dir(path);
        let hugetlbfs = hugetlbfs_page(&dir, &what, size)?.is_some();
        check_parent(&dir, &what)?;
        for _ in 0..3 {
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC;
            match open(path, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
                Ok(fd) => {
                    let st = fstat_of(&fd, &what)?;
                    let created = Created::File {
                        path: path.to_path_buf(),
                        dev: st.st_dev,
                        ino: st.st_ino,
                    };
                    return Self::finish_created(fd, size, what, hugetlbfs, created);
                }
                Err(Errno::EEXIST) => {}
                Err(Errno::ENOENT) => return Err(ShmError::NoDirectory { dir }),
                Err(errno @ (Errno::EACCES | Errno::EPERM | Errno::EROFS)) => {
                    return Err(ShmError::NotWritable { what, dir, errno })
                }
                Err(errno) => return Err(ShmError::Create { what, errno }),
            }
            // Never through a symlink; never blocking on a FIFO or taking a
            // terminal (they are refused as not regular files right after).
            let flags = OFlag::O_RDWR
                | OFlag::O_CLOEXEC
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY;
            match open(path, flags, Mode::empty()) {
                Ok(fd) => {
                    let mut backend = Self::finish_existing(fd, size, what, trust)?;
                    backend.hugetlbfs = hugetlbfs;
                    return Ok(backend);
                }
                Err(Errno::ENOENT) => continue,
                Err(Errno::ELOOP) => return Err(ShmError::Symlink { what }),
                Err(errno) => return Err(ShmError::OpenExisting { what, errno }),
            }
        }
        Err(ShmError::Create {
            what,
            errno: Errno::EAGAIN,
        })
    }

    /// Creates an unlinked file of `size` bytes in `dir` (server `-m DIR`).
    /// Nothing is ever left behind in `dir`.
    pub fn create_in_dir(dir: &Path, size: u64) -> Result<Self, ShmError> {
        check_size(size)?;
        let what = format!("an unlinked file in {}", dir.display());
        let hugetlbfs = hugetlbfs_page(dir, &what, size)?.is_some();
        let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = match open(dir, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => fd,
            // Filesystems without O_TMPFILE: a named file, unlinked at once.
            Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                let template = dir.join("ivvmm-shm.XXXXXX");
                let (fd, path) =
                    mkstemp(&template).map_err(|errno| dir_error(dir, &what, errno))?;
                // Unlinking can only fail if someone removed it already.
                let _ = unlink(&path);
                fd
            }
            Err(errno) => return Err(dir_error(dir, &what, errno)),
        };
        resize(&fd, size, &what)?;
        Ok(Self::from_parts(fd, size, size, what, hugetlbfs, None))
    }

    /// Creates an anonymous memfd of `size` bytes; `seal` forbids shrinking
    /// it (and adding further seals), so no peer can pull memory away from
    /// the others.
    pub fn memfd(size: u64, seal: bool) -> Result<Self, ShmError> {
        check_size(size)?;
        let what = "memfd".to_string();
        let mut flags = MFdFlags::MFD_CLOEXEC;
        if seal {
            flags |= MFdFlags::MFD_ALLOW_SEALING;
        }
        let fd = memfd_create(MEMFD_NAME, flags).map_err(|errno| ShmError::Create {
            what: what.clone(),
            errno,
        })?;
        resize(&fd, size, &what)?;
        if seal {
            let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL;
            fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|errno| ShmError::Seal {
                what: what.clone(),
                errno,
            })?;
        }
        Ok(Self::from_parts(fd, size, size, what, false, None))
    }

    /// Wraps an fd received from a server; the size is the object's size.
    /// The VMM checks it against the BAR it wants.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, ShmError> {
        let what = "from the server".to_string();
        let st = fstat_of(&fd, &what)?;
        if !is_regular(&st) {
            return Err(ShmError::NotRegularFile { what });
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if size == 0 {
            return Err(ShmError::Empty);
        }
        let hugetlbfs = fstatfs(&fd).is_ok_and(|s| s.filesystem_type() == HUGETLBFS_MAGIC);
        Ok(Self::from_parts(fd, size, size, what, hugetlbfs, None))
    }

    /// Start-up succeeded: an object we created stays when we are dropped.
    pub fn keep(&mut self) {
        self.created = None;
    }

    /// True if we created the object and will remove it on drop.
    #[cfg(test)]
    pub fn will_remove(&self) -> bool {
        self.created.is_some()
    }

    /// Which object this is (device, inode) and the size we use of it: what
    /// a restarted server must offer again to be rejoined.
    pub fn identity(&self) -> Option<ShmIdentity> {
        let st = nix::sys::stat::fstat(self.file.as_fd()).ok()?;
        Some(ShmIdentity {
            dev: st.st_dev,
            ino: st.st_ino,
            size: self.size,
        })
    }

    /// The size that is mapped and given to guests.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The object's own size when opened (≥ `size()` for an existing object).
    pub fn object_size(&self) -> u64 {
        self.object_size
    }

    /// True if the object lives on hugetlbfs.
    #[cfg(test)]
    pub fn is_hugetlbfs(&self) -> bool {
        self.hugetlbfs
    }

    /// The open object, e.g. to send its fd to peers.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A human-readable name of the object ("/dev/shm/foo", "memfd", ...).
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Maps exactly `size()` bytes `MAP_SHARED`, read/write.
    pub fn map(&self) -> Result<ShmMapping, ShmError> {
        ShmMapping::new(&self.file, self.size).map_err(|errno| ShmError::Map {
            what: self.what.clone(),
            size: format_size(self.size),
            errno,
            hint: if self.hugetlbfs {
                "are there enough free huge pages? (see HugePages_Free in /proc/meminfo)"
            } else {
                "the host cannot map that much; use a smaller size"
            },
        })
    }

    fn from_parts(
        fd: OwnedFd,
        size: u64,
        object_size: u64,
        what: String,
        hugetlbfs: bool,
        created: Option<Created>,
    ) -> Self {
        ShmBackend {
            file: File::from(fd),
            size,
            object_size,
            what,
            hugetlbfs,
            created,
        }
    }

    fn finish_created(
        fd: OwnedFd,
        size: u64,
        what: String,
        hugetlbfs: bool,
        created: Created,
    ) -> Result<Self, ShmError> {
        // Build the backend first so that a failing resize drops it, which
        // removes the object we just created.
        let backend = Self::from_parts(fd, size, size, what, hugetlbfs, Some(created));
        resize(&backend.file, size, &backend.what)?;
        Ok(backend)
    }

    /// Checks an object that existed before us: what it is, whose it is, its
    /// size. Every refusal happens before anything is changed; the only
    /// change ever made is growing an empty object to `size`.
    fn finish_existing(
        fd: OwnedFd,
        size: u64,
        what: String,
        trust: Trust,
    ) -> Result<Self, ShmError> {
        let st = fstat_of(&fd, &what)?;
        if !is_regular(&st) {
            return Err(ShmError::NotRegularFile { what });
        }
        check_trusted(&st, &what, trust)?;
        let mut actual = u64::try_from(st.st_size).unwrap_or(0);
        if actual == 0 {
            // An empty object is a placeholder someone prepared for us
            // (systemd-tmpfiles for Looking Glass): grow it, as QEMU does.
            // ftruncate keeps its owner and mode.
            resize(&fd, size, &what)?;
            log::info!("grew the empty {what} to {}", format_size(size));
            actual = size;
        }
        if actual < size {
            return Err(ShmError::TooSmall {
                what,
                actual: format_size(actual),
                wanted: format_size(size),
            });
        }
        Ok(Self::from_parts(fd, size, actual, what, false, None))
    }
}

impl AsFd for ShmBackend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for ShmBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for ShmBackend {
    fn drop(&mut self) {
        // Remove only what is still the object we created: if someone
        // replaced it meanwhile, theirs stays.
        let (path, shm_name, dev, ino) = match self.created.take() {
            Some(Created::Shm { name, dev, ino }) => (
                PathBuf::from(format!("{SHM_DIR}{name}")),
                Some(name),
                dev,
                ino,
            ),
            Some(Created::File { path, dev, ino }) => (path, None, dev, ino),
            None => return,
        };
        if !same_inode(&path, dev, ino) {
            return;
        }
        let result = match shm_name {
            Some(name) => shm_unlink(name.as_str()),
            None => unlink(&path),
        };
        if let Err(e) = result {
            log::warn!("could not remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
