// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Peers joining and leaving: the greeting, the notices to everyone else, and
//! dropping peers that hang up, talk, or stop reading.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Flush, Payload, Peer, Server, PROTOCOL_VERSION, SHM_MESSAGE};

/// Events we always watch on a peer socket: anything readable or a hang-up
/// means the peer is done (the protocol is one-way).
fn peer_events(want_write: bool) -> EventSet {
    let base = EventSet::IN | EventSet::READ_HANG_UP;
    if want_write {
        base | EventSet::OUT
    } else {
        base
    }
}

impl Server {
    /// True if the process behind `sock` runs as a uid that may join; a
    /// refusal is logged (rate-limited), the connection closed unanswered.
    fn peer_allowed(&mut self, sock: &UnixStream) -> bool {
        let uid = match getsockopt(sock, PeerCredentials) {
            Ok(cred) => cred.uid(),
            Err(e) => {
                if self.limit.allow() {
                    log::warn!("refusing a peer: cannot tell which user it runs as ({e})");
                }
                return false;
            }
        };
        if uid == self.euid || uid == 0 || self.peer_uids.contains(&uid) {
            return true;
        }
        if self.limit.allow() {
            log::warn!(
                "refusing a peer running as uid {uid}: only uid {} and root may join; if that user's peer is welcome, restart the server with --peer-uid {uid}",
                self.euid
            );
        }
        false
    }

    pub(super) fn add_peer(&mut self, sock: UnixStream) {
        if !self.peer_allowed(&sock) {
            return;
        }
        if let Err(e) = sock.set_nonblocking(true) {
            log::warn!("refusing a peer: cannot make its socket non-blocking: {e}");
            return;
        }
        let live = &self.peers;
        let Some(id) = self.ids.allocate(|i| live.contains_key(&i)) else {
            if self.limit.allow() {
                log::warn!("refusing a peer: all 65536 peer ids are in use");
            }
            return;
        };
        let vectors: io::Result<Vec<Rc<EventFd>>> = (0..self.vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Rc::new))
            .collect();
        let vectors = match vectors {
            Ok(v) => v,
            Err(e) => {
                if self.limit.allow() {
                    log::warn!(
                        "refusing a peer: cannot create its eventfds: {e}{}",
                        crate::fdlimit::hint(&e)
                    );
                }
                return;
            }
        };
        self.serial += 1;
        let token = (self.serial << 16) | u64::from(id);
        let mut peer = Peer::new(id, token, sock, vectors);
        let n = usize::from(self.vectors);
        peer.allow_greeting(3 + (self.peers.len() + 1) * n);
        // The greeting cannot overflow: its bound was just sized for it.
        peer.push(PROTOCOL_VERSION, Payload::None);
        peer.push(i64::from(id), Payload::None);
        peer.push(SHM_MESSAGE, Payload::Shm);
        for other in self.peers.values() {
            for v in &other.vectors {
                peer.push(i64::from(other.id), Payload::Event(Rc::clone(v)));
            }
        }
        for v in peer.vectors.clone() {
            peer.push(i64::from(id), Payload::Event(v));
        }
        let mut gone = Vec::new();
        for other in self.peers.values_mut() {
            let fits = peer
                .vectors
                .iter()
                .all(|v| other.push(i64::from(id), Payload::Event(Rc::clone(v))));
            if !fits {
                gone.push((other.id, stalled(other)));
            }
        }
        let ev = EpollEvent::new(peer_events(false), token);
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, peer.sock.as_raw_fd(), ev)
        {
            log::warn!("refusing peer {id}: cannot watch its socket: {e}");
            return;
        }
        log::debug!(
            "peer {id}: socket fd {}, eventfds {:?}, greeting of {} messages queued",
            peer.sock.as_raw_fd(),
            peer.vectors
                .iter()
                .map(|v| v.as_raw_fd())
                .collect::<Vec<_>>(),
            peer.queued()
        );
        self.peers.insert(id, peer);
        log::info!("peer {id} joined ({} connected)", self.peers.len());
        gone.extend(self.flush_all());
        self.drop_peers(gone);
    }

    /// Handles epoll readiness for the peer with this token.
    pub(super) fn peer_event(&mut self, token: u64, set: EventSet) {
        let id = (token & 0xffff) as u16;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.token != token {
            return; // a stale event for an earlier holder of this id
        }
        let done = EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP;
        if set.intersects(done) {
            let reason = why_done(&mut peer.sock);
            self.drop_peers(vec![(id, reason)]);
        } else if set.contains(EventSet::OUT) {
            if let Some(reason) = self.flush_one(id) {
                self.drop_peers(vec![(id, reason)]);
            }
        }
    }

    /// Flushes one peer's queue; `Some(reason)` if it must be dropped.
    fn flush_one(&mut self, id: u16) -> Option<String> {
        let shm = self.shm.file();
        let peer = self.peers.get_mut(&id)?;
        let want_write = match peer.flush(std::os::fd::AsFd::as_fd(shm)) {
            Ok(Flush::Done) => false,
            Ok(Flush::Blocked) => true,
            Err(e) => return Some(format!("sending to it failed: {e}")),
        };
        if want_write != peer.want_write {
            if want_write {
                log::debug!("peer {id}: socket full, {} messages wait", peer.queued());
            } else {
                log::debug!("peer {id}: queue drained");
            }
            peer.want_write = want_write;
            let ev = EpollEvent::new(peer_events(want_write), peer.token);
            let fd = peer.sock.as_raw_fd();
            if let Err(e) = self.epoll.ctl(ControlOperation::Modify, fd, ev) {
                return Some(format!("cannot watch its socket: {e}"));
            }
        }
        None
    }

    fn flush_all(&mut self) -> Vec<(u16, String)> {
        let ids: Vec<u16> = self.peers.keys().copied().collect();
        ids.into_iter()
            .filter_map(|id| self.flush_one(id).map(|r| (id, r)))
            .collect()
    }

    /// Drops peers and tells everyone else, which may overflow more queues:
    /// those peers are dropped in turn.
    pub(super) fn drop_peers(&mut self, mut work: Vec<(u16, String)>) {
        while let Some((id, reason)) = work.pop() {
            let Some(peer) = self.peers.remove(&id) else {
                continue;
            };
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                peer.sock.as_raw_fd(),
                EpollEvent::default(),
            );
            drop(peer);
            log::info!("peer {id} left: {reason} ({} connected)", self.peers.len());
            for other in self.peers.values_mut() {
                if !other.push(i64::from(id), Payload::None) {
                    work.push((other.id, stalled(other)));
                }
            }
            work.extend(self.flush_all());
        }
    }
}

fn stalled(peer: &Peer) -> String {
    format!(
        "it stopped reading ({} messages queued); dropped so it cannot stall the others",
        peer.queued()
    )
}

/// Why a readable/hung-up peer socket ends the peer, for the log.
fn why_done(sock: &mut UnixStream) -> String {
    let mut byte = [0u8; 1];
    match sock.read(&mut byte) {
        Ok(0) => "disconnected".into(),
        Ok(_) => "it sent data, but peers must not send anything; dropped".into(),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => "hung up".into(),
        // Closing with our messages unread resets the connection: a normal
        // disconnect for a peer that had no reason to read them.
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => "disconnected".into(),
        Err(e) => format!("its connection failed: {e}"),
    }
}
