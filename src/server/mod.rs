// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm server`: an ivshmem-server, wire-compatible with QEMU's.
//!
//! One thread, one epoll loop: the listening socket, every peer's socket and
//! a stop fd (a signalfd for SIGINT/SIGTERM from the CLI). On connect a peer
//! gets the version, its id, the shared memory, every other peer's eventfds
//! and its own; the others get its eventfds; when it goes they get its id
//! alone. Nothing a peer does can block the loop (see `peers.rs`).
//!
//! Only peers running as our uid, root, or a uid the user named
//! (`--peer-uid`) may join: SO_PEERCRED is checked on every connection, in
//! depth behind the 0600 socket.

mod files;
mod peers;

pub use files::Pidfile;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::config::size::format_size;
use crate::protocol::codec::{PROTOCOL_VERSION, SHM_MESSAGE};
use crate::protocol::ratelimit::RateLimit;
use crate::protocol::MAX_SERVER_VECTORS;
use crate::shm::{ShmBackend, ShmError, ShmSource, Trust};
use files::SocketFile;
use peers::{Flush, IdAllocator, Payload, Peer};

const LISTENER: u64 = 0;
const STOP: u64 = 1;
/// How long to stop accepting after running out of fds (avoids a busy loop
/// on a listener that stays readable).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections accepted per loop turn at most, and the time spent on them.
const ACCEPTS_PER_TURN: usize = 16;
const ACCEPT_TURN_BUDGET: Duration = Duration::from_millis(5);
/// Fds kept for the server itself (listener, epoll, signalfd, memory...).
const FD_RESERVE: u64 = 16;
/// Fewer peers than this fitting the fd limit is worth a warning.
const FEW_PEERS: u64 = 16;

/// Why the server could not start or stopped. One line: problem and fix.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{0} vectors requested, the maximum is {MAX_SERVER_VECTORS}: use -n {MAX_SERVER_VECTORS} or fewer")]
    TooManyVectors(u16),
    #[error(transparent)]
    Memory(#[from] ShmError),
    #[error("shared memory object {what} is {actual} but -l is {wanted}: peers map the whole object, so use -l {actual} or a new name; the object was left unchanged")]
    ShmSizeMismatch {
        what: String,
        actual: String,
        wanted: String,
    },
    #[error("socket path {0} is {1} bytes, at most 107 fit: choose a shorter -S path")]
    SocketPathTooLong(String, usize),
    #[error("another ivshmem server is listening on {0}: stop it or choose another -S path")]
    SocketLive(String),
    #[error("{0} exists and is not a socket: remove it or choose another -S path")]
    NotASocket(String),
    #[error("cannot listen on {0}: {1}; check that the directory exists and is writable")]
    Bind(String, io::Error),
    #[error("cannot write pidfile {0}: {1}; check that the directory exists and is writable")]
    Pidfile(String, io::Error),
    #[error("the server's event loop failed: {0}")]
    Epoll(io::Error),
}

/// What the server serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub socket: PathBuf,
    /// Shared-memory size in bytes (a power of two).
    pub size: u64,
    pub vectors: u16,
    pub shm: ShmSource,
    /// Keep a shm object the server created after it exits.
    pub keep_shm: bool,
    /// Whose existing -M object is accepted (`--shm-shared`: shared on
    /// purpose, another user may own it or others may write it).
    pub trust: Trust,
    /// Uids besides ours and root's whose peers may join (`--peer-uid`).
    pub peer_uids: Vec<u32>,
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    vectors: u16,
    shm: ShmBackend,
    socket: SocketFile,
    epoll: Epoll,
    peers: BTreeMap<u16, Peer>,
    ids: IdAllocator,
    serial: u64,
    accept_paused_until: Option<Instant>,
    limit: RateLimit,
    /// Who may join: our effective uid, root, and these.
    euid: u32,
    peer_uids: Vec<u32>,
}

impl Server {
    /// Opens the shared memory and binds the socket. If binding fails, a shm
    /// object we just created is removed again.
    pub fn new(config: &ServerConfig) -> Result<Self, ServerError> {
        if config.vectors > MAX_SERVER_VECTORS {
            return Err(ServerError::TooManyVectors(config.vectors));
        }
        let mut shm = ShmBackend::open_with(&config.shm, config.size, config.trust)?;
        if shm.object_size() != config.size {
            return Err(ServerError::ShmSizeMismatch {
                what: shm.describe().to_string(),
                actual: format_size(shm.object_size()),
                wanted: format_size(config.size),
            });
        }
        let socket = SocketFile::bind(&config.socket)?;
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        let ev = EpollEvent::new(EventSet::IN, LISTENER);
        epoll
            .ctl(ControlOperation::Add, socket.listener.as_raw_fd(), ev)
            .map_err(ServerError::Epoll)?;
        // main raised it already; a server built by a test or the fuzzer
        // raises it here.
        let limit = crate::fdlimit::raise_to_hard();
        let fit = crate::fdlimit::peers_that_fit(limit, config.vectors, 1, FD_RESERVE);
        if fit < FEW_PEERS {
            log::warn!(
                "the fd limit (RLIMIT_NOFILE {limit}) leaves room for only {fit} peers of {} vectors: raise it (ulimit -n) for more",
                config.vectors
            );
        } else {
            log::debug!("the fd limit leaves room for about {fit} peers");
        }
        if config.keep_shm {
            shm.keep();
        }
        log::info!(
            "serving {} of shared memory ({}), {} vectors per peer, on {}",
            format_size(config.size),
            shm.describe(),
            config.vectors,
            socket.path().display()
        );
        Ok(Server {
            vectors: config.vectors,
            shm,
            socket,
            epoll,
            peers: BTreeMap::new(),
            ids: IdAllocator::new(),
            serial: 0,
            accept_paused_until: None,
            limit: RateLimit::new(),
            euid: nix::unistd::geteuid().as_raw(),
            peer_uids: config.peer_uids.clone(),
        })
    }

    /// The socket path peers connect to.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The shared memory served.
    pub fn shm(&self) -> &ShmBackend {
        &self.shm
    }

    /// The number of connected peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Serves until `stop` becomes readable (a signalfd, an eventfd...).
    /// Peers are not told about each other's departure on stop: they may
    /// keep talking to each other without the server (see the spec).
    pub fn run(&mut self, stop: BorrowedFd<'_>) -> Result<(), ServerError> {
        let ev = EpollEvent::new(EventSet::IN, STOP);
        self.epoll
            .ctl(ControlOperation::Add, stop.as_raw_fd(), ev)
            .map_err(ServerError::Epoll)?;
        let result = self.serve();
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            stop.as_raw_fd(),
            EpollEvent::default(),
        );
        log::info!("server stopping; {} peers connected", self.peers.len());
        self.peers.clear();
        result
    }

    fn serve(&mut self) -> Result<(), ServerError> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = self.resume_accepting();
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Epoll(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => return Ok(()),
                    LISTENER => self.accept_all(),
                    token => self.peer_event(token, ev.event_set()),
                }
            }
        }
    }

    /// Re-enables accepting after a backoff; returns the epoll timeout (ms).
    fn resume_accepting(&mut self) -> i32 {
        let Some(until) = self.accept_paused_until else {
            return -1;
        };
        let now = Instant::now();
        if now < until {
            return i32::try_from((until - now).as_millis() + 1).unwrap_or(i32::MAX);
        }
        self.accept_paused_until = None;
        let ev = EpollEvent::new(EventSet::IN, LISTENER);
        let fd = self.socket.listener.as_raw_fd();
        if let Err(e) = self.epoll.ctl(ControlOperation::Modify, fd, ev) {
            log::warn!("cannot resume accepting peers: {e}");
        }
        -1
    }

    /// Accepts waiting peers, a bounded number per loop turn: a flood of
    /// connections must not keep the loop from SIGTERM or from the peers
    /// already here (the listener stays readable; the next turn goes on).
    fn accept_all(&mut self) {
        let start = Instant::now();
        for _ in 0..ACCEPTS_PER_TURN {
            if start.elapsed() >= ACCEPT_TURN_BUDGET {
                return;
            }
            match self.socket.listener.accept() {
                Ok((sock, _)) => self.add_peer(sock),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if self.limit.allow() {
                        log::warn!(
                            "cannot accept a peer: {e}{}; pausing new connections briefly",
                            crate::fdlimit::hint(&e)
                        );
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    let fd = self.socket.listener.as_raw_fd();
                    let ev = EpollEvent::new(EventSet::empty(), LISTENER);
                    let _ = self.epoll.ctl(ControlOperation::Modify, fd, ev);
                    return;
                }
            }
        }
    }
}

mod lifecycle;
