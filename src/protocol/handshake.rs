// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The client side of the server's greeting, shared by the VMM and
//! `ivvmm client`.
//!
//! The server sends, in order: the protocol version (0); our id; -1 with the
//! shared-memory fd; for each peer already present, its id once per vector
//! with that vector's eventfd; our own id once per vector with our incoming
//! eventfds. Unlike QEMU we never hang on a silent server or spin on a closing
//! one: everything is bounded by a timeout and every failure has its own error.
//!
//! Nor do we trust whoever answers: the socket file must be ours or root's
//! and the process behind it (SO_PEERCRED) must run as us or root, unless
//! the user names the uid it runs as ([`ConnectOptions::server_uid`]); the
//! memory fd must be a regular file and every doorbell fd an eventfd.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::geteuid;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use super::codec::{
    check_eventfd, check_memory_fd, fd_link, Message, MessageReader, Received, PROTOCOL_VERSION,
    SHM_MESSAGE,
};
use super::peer::PeerConnection;
use super::MAX_PEER_ID;
use crate::shm::{describe_uid, ShmBackend, ShmError};

/// How long the server may stay silent before we accept fewer own vectors
/// than we asked for (its `-n` is smaller than ours).
pub const DEFAULT_QUIET: Duration = Duration::from_millis(100);

/// Why joining a server failed. Each text names the problem and the fix.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("no ivshmem server socket at {0}: start one (ivvmm server -S {0}) or fix the path")]
    NoSocket(PathBuf),
    #[error(
        "nothing is listening on {0} (connection refused; a stale socket?): start the server again"
    )]
    Refused(PathBuf),
    #[error(
        "cannot connect to the ivshmem server at {0}: {1}; check the path and its permissions"
    )]
    Connect(PathBuf, io::Error),
    #[error("the ivshmem server at {path} did not complete the handshake within {timeout:?} (it sent {got}); is it an ivshmem server, and is it stuck?")]
    Timeout {
        path: PathBuf,
        timeout: Duration,
        got: String,
    },
    #[error("the ivshmem server at {path} sent more file descriptors than this process may hold (RLIMIT_NOFILE {limit}, reached with {peers} peers of up to {vectors} vectors each): raise the limit (ulimit -n), or use fewer peers or vectors")]
    TooManyFds {
        path: PathBuf,
        limit: u64,
        peers: usize,
        vectors: u16,
    },
    #[error("the ivshmem server at {path} closed the connection during the handshake (it sent {got}); see the server's log (too many peers?)")]
    Closed { path: PathBuf, got: String },
    #[error("the server at {path} speaks ivshmem protocol version {version}, we speak 0: use an ivshmem server from QEMU 2.5 or later, or ivvmm server")]
    Version { path: PathBuf, version: i64 },
    #[error("the server at {path} sent a malformed message ({what}): it is not a compatible ivshmem server")]
    Malformed { path: PathBuf, what: String },
    #[error("the ivshmem server socket {path} belongs to {owner}, not to us ({me}) or root: another user may have put it there to see the shared memory; if that user's server is the one you mean, pass --server-uid {uid} (server-uid={uid} in --ivshmem)")]
    ForeignSocket {
        path: PathBuf,
        owner: String,
        uid: u32,
        me: String,
    },
    #[error("the ivshmem server at {path} runs as {found}, not as us ({me}) or root: it would see and change the shared memory; if that user's server is the one you mean, pass --server-uid {uid} (server-uid={uid} in --ivshmem)")]
    ForeignServer {
        path: PathBuf,
        found: String,
        uid: u32,
        me: String,
    },
    #[error("cannot tell which user runs the ivshmem server at {path} (SO_PEERCRED: {errno}); is it a UNIX stream socket?")]
    PeerCred { path: PathBuf, errno: Errno },
    #[error("the ivshmem server at {path} sent {found} as {role}, where an ivshmem server sends {wanted}: it is not a compatible ivshmem server (or not one to trust); nothing was mapped")]
    WrongFd {
        path: PathBuf,
        found: String,
        role: String,
        wanted: &'static str,
    },
    #[error("the shared memory from the server at {path} is unusable: {source}")]
    Shm { path: PathBuf, source: ShmError },
    #[error("reading from the ivshmem server at {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the server told us when we joined.
#[derive(Debug)]
pub struct Handshake {
    /// Our peer id (IVPosition).
    pub id: u16,
    /// The shared memory; its size is the object's size (fstat).
    pub shm: ShmBackend,
    /// Peers already present: vector i is the i-th eventfd (ring to interrupt).
    pub peers: BTreeMap<u16, Vec<EventFd>>,
    /// Our incoming eventfds: vector i fires when a peer rings (id, i).
    pub own: Vec<EventFd>,
}

/// How to join: `vectors` we want, the overall timeout, the quiet period.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub vectors: u16,
    pub timeout: Duration,
    pub quiet: Duration,
    /// Warn when the server offers fewer vectors than `vectors`. Off when the
    /// caller only wants "as many as the server has, up to `vectors`".
    pub warn_fewer: bool,
    /// A uid besides ours and root's that may own the socket and run the
    /// server (`--server-uid`, `server-uid=`).
    pub server_uid: Option<u32>,
}

impl ConnectOptions {
    pub fn new(vectors: u16, timeout: Duration) -> Self {
        ConnectOptions {
            vectors,
            timeout,
            quiet: DEFAULT_QUIET,
            warn_fewer: true,
            server_uid: None,
        }
    }
}

/// Joins the server at `path` wanting `vectors` interrupt vectors.
pub fn connect(
    path: &Path,
    vectors: u16,
    timeout: Duration,
) -> Result<(PeerConnection, Handshake), HandshakeError> {
    connect_with(path, &ConnectOptions::new(vectors, timeout))
}

/// Joins the server at `path` with explicit options.
pub fn connect_with(
    path: &Path,
    opts: &ConnectOptions,
) -> Result<(PeerConnection, Handshake), HandshakeError> {
    let connect_err = |e: io::Error| match e.raw_os_error() {
        Some(libc::ENOENT) => HandshakeError::NoSocket(path.to_path_buf()),
        Some(libc::ECONNREFUSED) => HandshakeError::Refused(path.to_path_buf()),
        _ => HandshakeError::Connect(path.to_path_buf(), e),
    };
    let owner = std::fs::metadata(path).map_err(connect_err)?;
    let me = geteuid().as_raw();
    let trusted = |uid: u32| uid == me || uid == 0 || opts.server_uid == Some(uid);
    let owner = std::os::unix::fs::MetadataExt::uid(&owner);
    if !trusted(owner) {
        return Err(HandshakeError::ForeignSocket {
            path: path.to_path_buf(),
            owner: describe_uid(owner),
            uid: owner,
            me: describe_uid(me),
        });
    }
    let sock = UnixStream::connect(path).map_err(connect_err)?;
    // The file may have been swapped since: the process behind the
    // connection is what counts.
    let cred = getsockopt(&sock, PeerCredentials).map_err(|errno| HandshakeError::PeerCred {
        path: path.to_path_buf(),
        errno,
    })?;
    if !trusted(cred.uid()) {
        return Err(HandshakeError::ForeignServer {
            path: path.to_path_buf(),
            found: format!("{} (pid {})", describe_uid(cred.uid()), cred.pid()),
            uid: cred.uid(),
            me: describe_uid(me),
        });
    }
    sock.set_nonblocking(true)
        .map_err(|e| HandshakeError::Connect(path.to_path_buf(), e))?;
    let mut greeting = Greeting::new(path, opts.vectors);
    let mut reader = MessageReader::new();
    let deadline = super::deadline_after(opts.timeout);
    let mut last_message = Instant::now();
    loop {
        let received = reader
            .read(sock.as_fd())
            .map_err(|source| match super::codec::fds_lost(&source) {
                Some(lost) => HandshakeError::TooManyFds {
                    path: path.to_path_buf(),
                    limit: lost.limit,
                    peers: greeting.peers.len(),
                    vectors: greeting.vectors,
                },
                None => HandshakeError::Io {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        match received {
            Received::Message(m) => {
                last_message = Instant::now();
                greeting.accept(m)?;
                if greeting.complete() {
                    break;
                }
                // A server that never stops talking gets the same deadline
                // as a silent one.
                if last_message >= deadline {
                    return Err(HandshakeError::Timeout {
                        path: path.to_path_buf(),
                        timeout: opts.timeout,
                        got: greeting.progress(),
                    });
                }
            }
            Received::Eof { .. } => {
                return Err(HandshakeError::Closed {
                    path: path.to_path_buf(),
                    got: greeting.progress(),
                })
            }
            Received::WouldBlock => {
                let now = Instant::now();
                let quiet_end = last_message + opts.quiet;
                if greeting.shm.is_some() && now >= quiet_end {
                    if opts.warn_fewer {
                        log::warn!(
                            "the ivshmem server at {} offers {} interrupt vectors, we asked for {}: using {}",
                            path.display(),
                            greeting.own.len(),
                            opts.vectors,
                            greeting.own.len()
                        );
                    }
                    break;
                }
                if now >= deadline {
                    return Err(HandshakeError::Timeout {
                        path: path.to_path_buf(),
                        timeout: opts.timeout,
                        got: greeting.progress(),
                    });
                }
                let until = if greeting.shm.is_some() {
                    quiet_end.min(deadline)
                } else {
                    deadline
                };
                wait_readable(&sock, until - now);
            }
        }
    }
    greeting.finish(sock, reader)
}

fn wait_readable(sock: &UnixStream, wait: Duration) {
    let ms = u16::try_from(wait.as_millis().saturating_add(1)).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    // Errors (EINTR) just mean we look again; the deadline bounds the loop.
    let _ = poll(&mut fds, PollTimeout::from(ms));
}

/// The handshake's state so far.
struct Greeting {
    path: PathBuf,
    vectors: u16,
    version: bool,
    id: Option<u16>,
    shm: Option<ShmBackend>,
    peers: BTreeMap<u16, Vec<EventFd>>,
    own: Vec<EventFd>,
}

impl Greeting {
    fn new(path: &Path, vectors: u16) -> Self {
        Greeting {
            path: path.to_path_buf(),
            vectors,
            version: false,
            id: None,
            shm: None,
            peers: BTreeMap::new(),
            own: Vec::new(),
        }
    }

    fn malformed(&self, what: String) -> HandshakeError {
        HandshakeError::Malformed {
            path: self.path.clone(),
            what,
        }
    }

    fn complete(&self) -> bool {
        self.shm.is_some() && self.own.len() >= usize::from(self.vectors)
    }

    /// What arrived so far, for timeout and close errors.
    fn progress(&self) -> String {
        if !self.version {
            "nothing".into()
        } else if self.id.is_none() {
            "only the protocol version".into()
        } else if self.shm.is_none() {
            "no shared memory".into()
        } else {
            format!("{} of {} interrupt vectors", self.own.len(), self.vectors)
        }
    }

    fn accept(&mut self, m: Message) -> Result<(), HandshakeError> {
        if !self.version {
            if m.value != PROTOCOL_VERSION {
                return Err(HandshakeError::Version {
                    path: self.path.clone(),
                    version: m.value,
                });
            }
            if m.fd.is_some() {
                return Err(self.malformed("an fd came with the version".into()));
            }
            self.version = true;
            return Ok(());
        }
        let Some(own_id) = self.id else {
            if m.fd.is_some() || !(0..=MAX_PEER_ID).contains(&m.value) {
                return Err(self.malformed(format!("invalid id message {}", m.value)));
            }
            self.id = Some(m.value as u16);
            return Ok(());
        };
        if m.value == SHM_MESSAGE {
            return self.accept_shm(m.fd);
        }
        if !(0..=MAX_PEER_ID).contains(&m.value) {
            return Err(self.malformed(format!("peer id {} out of 0..65535", m.value)));
        }
        let id = m.value as u16;
        let Some(fd) = m.fd else {
            if id == own_id {
                return Err(self.malformed("a disconnect notice for our own id".into()));
            }
            // A peer that left while we were joining.
            self.peers.remove(&id);
            return Ok(());
        };
        let event = self.eventfd(fd, id)?;
        let list = if id == own_id {
            &mut self.own
        } else {
            self.peers.entry(id).or_default()
        };
        // The server may have more vectors than we want: extras are closed.
        if list.len() < usize::from(self.vectors) {
            list.push(event);
        }
        Ok(())
    }

    fn accept_shm(&mut self, fd: Option<OwnedFd>) -> Result<(), HandshakeError> {
        let Some(fd) = fd else {
            return Err(self.malformed("the shared-memory message (-1) came without an fd".into()));
        };
        if self.shm.is_some() {
            return Err(self.malformed("a second shared-memory fd".into()));
        }
        if let Err(found) = check_memory_fd(fd.as_fd()) {
            return Err(HandshakeError::WrongFd {
                path: self.path.clone(),
                found,
                role: "the shared memory".into(),
                wanted: "a memfd or a file on tmpfs or hugetlbfs",
            });
        }
        self.note_unsealed(&fd);
        let shm = ShmBackend::from_fd(fd).map_err(|source| HandshakeError::Shm {
            path: self.path.clone(),
            source,
        })?;
        self.shm = Some(shm);
        Ok(())
    }

    /// QEMU's server sends a memfd without F_SEAL_SHRINK: accepted (a peer
    /// that shrinks it makes the others fault, it cannot reach our memory),
    /// but worth saying once at -v.
    fn note_unsealed(&self, fd: &OwnedFd) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if SAID.load(Ordering::Relaxed) {
            return;
        }
        let is_memfd = fd_link(fd.as_fd()).is_some_and(|l| l.starts_with("/memfd:"));
        if !is_memfd {
            return;
        }
        let sealed = fcntl(fd, FcntlArg::F_GET_SEALS)
            .is_ok_and(|s| SealFlag::from_bits_truncate(s).contains(SealFlag::F_SEAL_SHRINK));
        if !sealed && !SAID.swap(true, Ordering::Relaxed) {
            log::info!(
                "the shared memory from the ivshmem server at {} is a memfd not sealed against shrinking (as QEMU's server sends it): accepted, but any peer could shrink it",
                self.path.display()
            );
        }
    }

    fn eventfd(&self, fd: OwnedFd, id: u16) -> Result<EventFd, HandshakeError> {
        if let Err(found) = check_eventfd(fd.as_fd()) {
            return Err(HandshakeError::WrongFd {
                path: self.path.clone(),
                found,
                role: format!("a doorbell of peer {id}"),
                wanted: "an eventfd",
            });
        }
        // SAFETY: we own `fd` (just received) and it is an eventfd; EventFd
        // takes over closing it.
        Ok(unsafe { <EventFd as std::os::fd::FromRawFd>::from_raw_fd(fd.into_raw_fd()) })
    }

    fn finish(
        self,
        sock: UnixStream,
        reader: MessageReader,
    ) -> Result<(PeerConnection, Handshake), HandshakeError> {
        let (Some(id), Some(shm)) = (self.id, self.shm) else {
            // complete() or the quiet rule only end the loop with both set.
            return Err(HandshakeError::Malformed {
                path: self.path,
                what: "the handshake ended without an id or shared memory".into(),
            });
        };
        let counts = self
            .peers
            .iter()
            .map(|(&peer, fds)| (peer, fds.len()))
            .collect();
        let conn = PeerConnection::new(sock, reader, id, self.vectors, self.own.len(), counts);
        let handshake = Handshake {
            id,
            shm,
            peers: self.peers,
            own: self.own,
        };
        Ok((conn, handshake))
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
