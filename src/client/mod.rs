// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm client`: a host process that joins an ivshmem server as a peer.
//!
//! It sees what a VM sees: an id, the shared memory, its own incoming
//! eventfds and every other peer's outgoing ones, and it can ring, wait,
//! dump, and measure round trips (`ping`/`pong`, see [`pingpong`]).

pub mod pingpong;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::config::size::format_size;
use crate::protocol::rejoin::{refusal, Backoff, Refusal};
use crate::protocol::{
    connect_with, ConnectOptions, HandshakeError, PeerConnection, PeerEvent, MAX_SERVER_VECTORS,
};
use crate::shm::{ShmBackend, ShmError, ShmMapping};

/// Why a client command failed. One line: problem and fix.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error(transparent)]
    Memory(#[from] ShmError),
    #[error("peer {peer} is not connected (connected: {known}); list peers with `ivvmm client -S SOCKET`")]
    UnknownPeer { peer: u16, known: String },
    #[error("peer {peer} has {count} vectors here, so vector {vector} does not exist: use a vector below {count}, or join with more (-n)")]
    NoSuchVector {
        peer: u16,
        vector: u16,
        count: usize,
    },
    #[error("we have {count} vectors, so we cannot wait on vector {vector}: use a vector below {count}, or join with more (-n)")]
    NoOwnVector { vector: u16, count: usize },
    #[error("no interrupt on vector {vector} within {after:?}; did the other side ring (peer {id}, vector {vector})?")]
    Timeout {
        vector: u16,
        id: u16,
        after: Duration,
    },
    #[error("range {offset:#x}+{len:#x} is outside the shared memory ({size}); choose --offset/--len inside it")]
    Range { offset: u64, len: u64, size: String },
    #[error("no pong answered in shared memory (record at offset 0 starts with {found:?}): start `ivvmm client pong`, the guest tool's `ivshm pong` or the test guest's `pingpong role=pong` first")]
    NoPong { found: [u8; 4] },
    #[error("round {round}: no answer from peer {peer} within {after:?}; is it running pong on vector {vector}?")]
    NoAnswer {
        round: u64,
        peer: u16,
        vector: u16,
        after: Duration,
    },
    #[error("interrupted by a signal before it was done")]
    Interrupted,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A joined peer: connection, memory and eventfds.
#[derive(Debug)]
pub struct Client {
    conn: PeerConnection,
    shm: ShmBackend,
    map: ShmMapping,
    peers: BTreeMap<u16, Vec<EventFd>>,
    own: Vec<EventFd>,
    /// How we joined, to join again (`follow` with rejoining).
    socket: PathBuf,
    opts: ConnectOptions,
}

/// One change the client noticed, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined(u16),
    Left(u16),
    ServerGone,
}

impl Client {
    /// Joins the server at `socket`. `vectors: None` keeps whatever the server
    /// offers (up to [`MAX_SERVER_VECTORS`]) without a warning. `server_uid`:
    /// a uid besides ours and root's the server may run as.
    pub fn join(
        socket: &Path,
        vectors: Option<u16>,
        timeout: Duration,
        server_uid: Option<u32>,
    ) -> Result<Self, ClientError> {
        let mut opts = ConnectOptions::new(vectors.unwrap_or(MAX_SERVER_VECTORS), timeout);
        opts.warn_fewer = vectors.is_some();
        opts.server_uid = server_uid;
        let (conn, hs) = connect_with(socket, &opts)?;
        let map = hs.shm.map()?;
        Ok(Client {
            conn,
            shm: hs.shm,
            map,
            peers: hs.peers,
            own: hs.own,
            socket: socket.to_path_buf(),
            opts,
        })
    }

    pub fn id(&self) -> u16 {
        self.conn.id()
    }

    pub fn shm(&self) -> &ShmBackend {
        &self.shm
    }

    pub fn memory(&self) -> &ShmMapping {
        &self.map
    }

    /// Our incoming vectors.
    pub fn vectors(&self) -> usize {
        self.own.len()
    }

    /// Connected peers and how many of their vectors we can ring.
    pub fn peers(&self) -> impl Iterator<Item = (u16, usize)> + '_ {
        self.peers.iter().map(|(&id, v)| (id, v.len()))
    }

    /// One line describing us, e.g. `id=3 vectors=2 shm=4M peers=0,1`.
    pub fn summary(&self) -> String {
        let peers: Vec<String> = self.peers.keys().map(u16::to_string).collect();
        format!(
            "id={} vectors={} shm={} peers={}",
            self.id(),
            self.own.len(),
            format_size(self.shm.size()),
            peers.join(",")
        )
    }

    /// Applies what the server said since the last call.
    pub fn update(&mut self) -> Vec<Notice> {
        let mut notices = Vec::new();
        for event in self.conn.read_events() {
            match event {
                PeerEvent::PeerJoined { id, vector, fd } => {
                    let list = self.peers.entry(id).or_default();
                    if usize::from(vector) == list.len() {
                        list.push(fd);
                    }
                    if vector == 0 {
                        notices.push(Notice::Joined(id));
                    }
                }
                PeerEvent::PeerLeft { id } => {
                    self.peers.remove(&id);
                    notices.push(Notice::Left(id));
                }
                PeerEvent::ServerGone => notices.push(Notice::ServerGone),
            }
        }
        notices
    }

    fn known_peers(&self) -> String {
        if self.peers.is_empty() {
            return "none".into();
        }
        let ids: Vec<String> = self.peers.keys().map(u16::to_string).collect();
        ids.join(", ")
    }

    fn peer_fd(&mut self, peer: u16, vector: u16) -> Result<&EventFd, ClientError> {
        if !self.peers.contains_key(&peer) {
            self.update();
        }
        let known = self.known_peers();
        let fds = self
            .peers
            .get(&peer)
            .ok_or(ClientError::UnknownPeer { peer, known })?;
        fds.get(usize::from(vector))
            .ok_or(ClientError::NoSuchVector {
                peer,
                vector,
                count: fds.len(),
            })
    }

    /// Rings `peer`'s `vector` (its eventfd counter +1).
    pub fn ring(&mut self, peer: u16, vector: u16) -> Result<(), ClientError> {
        let fd = self.peer_fd(peer, vector)?;
        match fd.write(1) {
            // The counter is saturated: the peer has a pending interrupt.
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(()),
            r => r.map_err(ClientError::Io),
        }
    }

    fn own_fd(&self, vector: u16) -> Result<&EventFd, ClientError> {
        self.own
            .get(usize::from(vector))
            .ok_or(ClientError::NoOwnVector {
                vector,
                count: self.own.len(),
            })
    }

    /// Waits until our `vector` fires; returns the event count read. Server
    /// messages are applied meanwhile; `stop` readable means interrupted.
    pub fn wait(
        &mut self,
        vector: u16,
        timeout: Option<Duration>,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<u64, ClientError> {
        let deadline = timeout.map(crate::protocol::deadline_after);
        loop {
            let fd = self.own_fd(vector)?;
            if let Some(count) = take(fd)? {
                return Ok(count);
            }
            let left = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(ClientError::Timeout {
                            vector,
                            id: self.id(),
                            after: timeout.unwrap_or_default(),
                        });
                    }
                    Some(left)
                }
                None => None,
            };
            let fd = self.own_fd(vector)?;
            // SAFETY: the EventFd outlives this borrow (used only by poll).
            let own = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
            let conn = self.conn.as_fd();
            let ready = wait_any(
                &[Some(own), (!self.conn.is_gone()).then_some(conn), stop],
                left,
            )?;
            if ready[2] {
                return Err(ClientError::Interrupted);
            }
            if ready[1] {
                self.update();
            }
        }
    }

    /// Follows joins and leaves until `stop` is readable or the server
    /// goes — or, with `rejoin`, until `stop`: a lost server is joined again
    /// once it is back with the same memory (docs/ivshmem-presence.md).
    pub fn follow(
        &mut self,
        stop: Option<BorrowedFd<'_>>,
        rejoin: bool,
        out: &mut dyn Write,
    ) -> Result<(), ClientError> {
        loop {
            let conn = self.conn.as_fd();
            let ready = wait_any(&[Some(conn), stop], None)?;
            if ready[1] {
                return Ok(());
            }
            for notice in self.update() {
                match notice {
                    Notice::Joined(id) => writeln!(out, "joined id={id}")?,
                    Notice::Left(id) => writeln!(out, "left id={id}")?,
                    Notice::ServerGone if rejoin => {
                        writeln!(out, "server gone; rejoining when it is back")?;
                        out.flush()?;
                        if !self.rejoin(stop)? {
                            return Ok(());
                        }
                        writeln!(out, "rejoined {}", self.summary())?;
                    }
                    Notice::ServerGone => {
                        writeln!(out, "server gone")?;
                        out.flush()?;
                        return Ok(());
                    }
                }
                out.flush()?;
            }
        }
    }

    /// Tries the socket again (100 ms, doubling up to 1 s) until a server
    /// offers the same memory object and vector count, then takes its id,
    /// eventfds and peers (the mapping stays: it is the same memory).
    /// Returns false if `stop` became readable first.
    fn rejoin(&mut self, stop: Option<BorrowedFd<'_>>) -> Result<bool, ClientError> {
        let want = self.shm.identity();
        let mut backoff = Backoff::default();
        let mut said: Option<Refusal> = None;
        loop {
            if wait_any(&[stop], Some(backoff.next_wait()))?[0] {
                return Ok(false);
            }
            let Ok((conn, hs)) = connect_with(&self.socket, &self.opts) else {
                continue;
            };
            if let Some(why) = refusal(want, self.own.len(), &hs) {
                if !why.said_before(&mut said) {
                    log::warn!(
                        "a server is back at {} but this client is staying away: {why}; still trying",
                        self.socket.display()
                    );
                }
                continue;
            }
            self.conn = conn;
            self.peers = hs.peers;
            self.own = hs.own;
            return Ok(true);
        }
    }

    /// Writes a `hexdump -C` style dump of `len` bytes at `offset`.
    pub fn dump(&self, offset: u64, len: u64, out: &mut dyn Write) -> Result<(), ClientError> {
        let size = self.map.len() as u64;
        let range_err = || ClientError::Range {
            offset,
            len,
            size: format_size(size),
        };
        let end = offset.checked_add(len).ok_or_else(range_err)?;
        if end > size {
            return Err(range_err());
        }
        let mut pos = offset;
        let mut line = [0u8; 16];
        while pos < end {
            let n = (end - pos).min(16) as usize;
            self.map
                .read(pos as usize, &mut line[..n])
                .ok_or_else(range_err)?;
            writeln!(out, "{}", hex_line(pos, &line[..n]))?;
            pos += n as u64;
        }
        Ok(())
    }
}

/// Reads an eventfd without blocking: `Some(count)` if it had fired.
fn take(fd: &EventFd) -> Result<Option<u64>, ClientError> {
    match fd.read() {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(None),
        Err(e) => Err(ClientError::Io(e)),
    }
}

/// Polls the given fds (`None` entries are skipped) for readability.
fn wait_any(
    fds: &[Option<BorrowedFd<'_>>],
    timeout: Option<Duration>,
) -> Result<Vec<bool>, ClientError> {
    let mut pollfds: Vec<PollFd<'_>> = fds
        .iter()
        .flatten()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    let t = match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            PollTimeout::try_from(d.as_millis().saturating_add(1).min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(&mut pollfds, t) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => return Err(ClientError::Io(e.into())),
    }
    let mut ready = pollfds.iter().map(|p| p.any().unwrap_or(false));
    Ok(fds
        .iter()
        .map(|fd| fd.is_some() && ready.next().unwrap_or(false))
        .collect())
}

/// One line of a hexdump: offset, 16 hex bytes, printable ASCII.
fn hex_line(offset: u64, bytes: &[u8]) -> String {
    let mut s = format!("{offset:08x} ");
    for i in 0..16 {
        if i == 8 {
            s.push(' ');
        }
        match bytes.get(i) {
            Some(b) => {
                let _ = write!(s, " {b:02x}");
            }
            None => s.push_str("   "),
        }
    }
    s.push_str("  |");
    for &b in bytes {
        s.push(if b.is_ascii_graphic() || b == b' ' {
            b as char
        } else {
            '.'
        });
    }
    s.push('|');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_lines_look_like_hexdump_c() {
        assert_eq!(
            hex_line(0x40, b"PING\x01\x00\x00\x00"),
            "00000040  50 49 4e 47 01 00 00 00                           |PING....|"
        );
        let full: Vec<u8> = (0x41..0x51).collect();
        assert_eq!(
            hex_line(0, &full),
            "00000000  41 42 43 44 45 46 47 48  49 4a 4b 4c 4d 4e 4f 50  |ABCDEFGHIJKLMNOP|"
        );
    }
}
