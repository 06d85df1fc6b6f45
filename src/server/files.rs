// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The files the server puts in the filesystem: its listening socket and its
//! pidfile. Both are created 0600 without following a symlink and removed
//! when the server stops, but only if they are still ours (someone may have
//! replaced them meanwhile).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{umask, Mode};

use super::ServerError;

fn disp(path: &Path) -> String {
    path.display().to_string()
}

/// Longest socket path: sun_path holds 108 bytes including the NUL.
const SUN_PATH_MAX: usize = 107;

/// The listening socket; its path is removed on drop.
#[derive(Debug)]
pub struct SocketFile {
    pub listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Binds `path` with mode 0600. A stale socket (nobody listening) is
    /// replaced; a live one or a non-socket file (a symlink included) is an
    /// error. bind(2) itself never follows a symlink: it fails on any
    /// existing name.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let len = path.as_os_str().len();
        if len > SUN_PATH_MAX {
            return Err(ServerError::SocketPathTooLong(disp(path), len));
        }
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(ServerError::SocketLive(disp(path))),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    log::info!("replacing stale socket {}", path.display());
                    fs::remove_file(path).map_err(|e| ServerError::Bind(disp(path), e))?;
                }
                Err(e) => return Err(ServerError::Bind(disp(path), e)),
            },
            Ok(_) => return Err(ServerError::NotASocket(disp(path))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServerError::Bind(disp(path), e)),
        }
        // The socket's mode comes from the umask at bind time: make it 0600
        // from the first instant (a chmod afterwards would leave a window).
        let old = umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        umask(old);
        let listener = bound.map_err(|e| ServerError::Bind(disp(path), e))?;
        // No chmod: the umask made it 0600, and chmod would follow a symlink
        // someone swapped in meanwhile.
        let meta = fs::symlink_metadata(path).map_err(|e| ServerError::Bind(disp(path), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ServerError::Bind(disp(path), e))?;
        Ok(SocketFile {
            listener,
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("could not remove socket {}: {e}", self.path.display());
            }
        }
    }
}

/// A pidfile holding our pid; removed on drop if it is still the file we
/// wrote.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Pidfile {
    /// Writes the pidfile atomically (a temporary file renamed into place),
    /// so whoever sees it sees the whole pid. Nothing is followed through a
    /// symlink: the temporary file is created exclusively with O_NOFOLLOW,
    /// and rename(2) replaces a symlink at `path` rather than its target.
    pub fn write(path: &Path) -> Result<Self, ServerError> {
        let pid = std::process::id();
        let err = |e| ServerError::Pidfile(disp(path), e);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{pid}.tmp"));
        let tmp = PathBuf::from(tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                writeln!(f, "{pid}")?;
                f.metadata()
            })
            .and_then(|meta| fs::rename(&tmp, path).map(|()| meta));
        let meta = match written {
            Ok(meta) => meta,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(err(e));
            }
        };
        Ok(Pidfile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        // Compared, not read: reading would follow a symlink or block on a
        // FIFO someone swapped in.
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("could not remove pidfile {}: {e}", self.path.display());
            }
        }
    }
}
