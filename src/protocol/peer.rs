// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! After the handshake: the server's later messages as events.
//!
//! A peer id with an fd is one more vector of that peer (the N-th fd is vector
//! N-1); a peer id without an fd means that peer left; EOF means the server is
//! gone (the VMs keep running and keep talking, but nobody new can join).
//! Malformed input is logged, rate-limited, and ignored: a server can never
//! make us panic.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::eventfd::EventFd;

use super::codec::{check_eventfd, Message, MessageReader, Received, SHM_MESSAGE};
use super::ratelimit::RateLimit;
use super::MAX_PEER_ID;

/// One change in the set of peers.
#[derive(Debug)]
pub enum PeerEvent {
    /// Peer `id`'s vector `vector` can now be rung by writing to `fd`.
    PeerJoined { id: u16, vector: u16, fd: EventFd },
    /// Peer `id` left: drop every fd of it.
    PeerLeft { id: u16 },
    /// The server closed the connection (or it broke); no more events.
    ServerGone,
}

/// Our connection to the server after the handshake. Its fd is non-blocking;
/// an event loop watches it for readability and calls [`read_events`].
///
/// [`read_events`]: PeerConnection::read_events
#[derive(Debug)]
pub struct PeerConnection {
    sock: UnixStream,
    reader: MessageReader,
    id: u16,
    vectors: u16,
    own_received: usize,
    /// Vectors received so far per live peer.
    peers: BTreeMap<u16, usize>,
    gone: bool,
    limit: RateLimit,
    /// Peers dropped because one of their fds could not be received.
    broken: BTreeSet<u16>,
}

/// How many messages one [`PeerConnection::read_events`] call reads: a
/// server that floods costs the caller a bounded slice of work per call.
pub const MESSAGES_PER_CALL: usize = 64;

impl PeerConnection {
    pub(super) fn new(
        sock: UnixStream,
        reader: MessageReader,
        id: u16,
        vectors: u16,
        own_received: usize,
        peers: BTreeMap<u16, usize>,
    ) -> Self {
        PeerConnection {
            sock,
            reader,
            id,
            vectors,
            own_received,
            peers,
            gone: false,
            limit: RateLimit::new(),
            broken: BTreeSet::new(),
        }
    }

    /// Our peer id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The number of vectors we keep per peer.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Ids of the peers we currently know.
    pub fn peer_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.peers.keys().copied()
    }

    /// True once the server is gone; the fd can be dropped from the loop.
    pub fn is_gone(&self) -> bool {
        self.gone
    }

    /// Reads the messages available now, at most [`MESSAGES_PER_CALL`], and
    /// returns the resulting events, ending with `ServerGone` once when the
    /// server disappears. What is left stays in the socket (still readable,
    /// so an event loop comes back for it after its other work).
    pub fn read_events(&mut self) -> Vec<PeerEvent> {
        self.read_events_max(MESSAGES_PER_CALL)
    }

    /// As [`read_events`](Self::read_events), reading at most `max` messages.
    pub fn read_events_max(&mut self, max: usize) -> Vec<PeerEvent> {
        let mut events = Vec::new();
        let mut read = 0;
        while !self.gone && read < max {
            read += 1;
            match self.reader.read(self.sock.as_fd()) {
                Ok(Received::Message(m)) => events.extend(self.handle(m)),
                Ok(Received::WouldBlock) => break,
                Ok(Received::Eof { partial }) => {
                    if partial {
                        log::warn!("ivshmem server closed the connection mid-message");
                    }
                    self.gone = true;
                    events.push(PeerEvent::ServerGone);
                }
                Err(e) => {
                    if let Some(lost) = super::codec::fds_lost(&e) {
                        events.extend(self.fd_lost(lost));
                        continue;
                    }
                    log::warn!("ivshmem server connection failed: {e}");
                    self.gone = true;
                    events.push(PeerEvent::ServerGone);
                }
            }
        }
        events
    }

    /// A vector of some peer arrived without its eventfd (our fd table is
    /// full). Its later vectors would be numbered wrong, so the peer is
    /// dropped here, loudly, until the server says it left.
    fn fd_lost(&mut self, lost: super::codec::FdsLost) -> Option<PeerEvent> {
        if self.limit.allow() {
            log::error!("ivshmem server: {lost}; that peer can't be rung from this VM");
        }
        let id = u16::try_from(lost.value).ok()?;
        if id == self.id {
            return None;
        }
        self.broken.insert(id);
        self.peers.remove(&id).map(|_| PeerEvent::PeerLeft { id })
    }

    fn ignore(&mut self, what: std::fmt::Arguments<'_>) -> Option<PeerEvent> {
        if self.limit.allow() {
            log::warn!("ivshmem server sent {what}; ignored");
        }
        None
    }

    fn handle(&mut self, m: Message) -> Option<PeerEvent> {
        if m.value == SHM_MESSAGE {
            return self.ignore(format_args!("a second shared-memory message"));
        }
        if !(0..=MAX_PEER_ID).contains(&m.value) {
            let v = m.value;
            return self.ignore(format_args!("peer id {v} out of 0..65535"));
        }
        let id = m.value as u16;
        let Some(fd) = m.fd else {
            if self.broken.remove(&id) {
                return None; // it was dropped when its fd was lost
            }
            if self.peers.remove(&id).is_some() {
                return Some(PeerEvent::PeerLeft { id });
            }
            return self.ignore(format_args!("a disconnect notice for unknown peer {id}"));
        };
        if let Err(found) = check_eventfd(fd.as_fd()) {
            return self.ignore(format_args!(
                "{found} as a doorbell of peer {id}, not an eventfd"
            ));
        }
        if id == self.id {
            // Our own vectors beyond what we use (the server has more): the
            // spec says close them. Late ones after a quiet-period accept too.
            self.own_received += 1;
            log::debug!("closing extra own eventfd #{}", self.own_received);
            return None;
        }
        if self.broken.contains(&id) {
            return None; // more vectors of a peer we could not hold
        }
        let count = self.peers.entry(id).or_insert(0);
        let vector = *count;
        *count += 1;
        if vector >= usize::from(self.vectors) {
            return None;
        }
        // SAFETY: we own `fd` (just received) and it is an eventfd.
        let fd = unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) };
        Some(PeerEvent::PeerJoined {
            id,
            vector: vector as u16,
            fd,
        })
    }
}

impl AsFd for PeerConnection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for PeerConnection {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}
