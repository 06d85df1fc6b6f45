// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The server's view of one peer, its outgoing queue, and id allocation.
//!
//! Sends never block: messages go to a per-peer queue that is flushed as far
//! as the socket takes it. A peer whose queue grows past its bound is not
//! reading and gets dropped, so it can never stall the server or the others.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use vmm_sys_util::eventfd::EventFd;

use crate::protocol::codec::{encode, send_raw, MESSAGE_LEN};

/// How many messages beyond its own greeting may wait for one peer. Join and
/// leave notices are two per peer that comes and goes, so a reading peer never
/// gets near this; one that does is not reading.
pub const QUEUE_SLACK: usize = 1024;

/// What travels with a message.
#[derive(Debug, Clone)]
pub enum Payload {
    None,
    /// The server's shared-memory fd.
    Shm,
    /// A peer's eventfd; shared so a queued notice stays valid after the
    /// peer it names has gone.
    Event(Rc<EventFd>),
}

#[derive(Debug)]
struct QueuedMessage {
    bytes: [u8; MESSAGE_LEN],
    payload: Payload,
}

/// A connected peer.
#[derive(Debug)]
pub struct Peer {
    pub id: u16,
    /// Epoll token: unique per connection even when an id comes back.
    pub token: u64,
    pub sock: UnixStream,
    /// Our incoming eventfds, one per vector; others ring us through them.
    pub vectors: Vec<Rc<EventFd>>,
    queue: VecDeque<QueuedMessage>,
    /// Bytes of the front message already sent (stream sockets may split).
    sent: usize,
    limit: usize,
    /// True while epoll also watches for writability.
    pub want_write: bool,
}

/// The result of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything went out.
    Done,
    /// The socket is full; wait for EPOLLOUT.
    Blocked,
}

impl Peer {
    pub fn new(id: u16, token: u64, sock: UnixStream, vectors: Vec<Rc<EventFd>>) -> Self {
        Peer {
            id,
            token,
            sock,
            vectors,
            queue: VecDeque::new(),
            sent: 0,
            limit: QUEUE_SLACK,
            want_write: false,
        }
    }

    /// Allows `greeting` more queued messages (its handshake) than the slack.
    pub fn allow_greeting(&mut self, greeting: usize) {
        self.limit = greeting.saturating_add(QUEUE_SLACK);
    }

    /// Queues a message; false if the queue is over its bound (drop the peer).
    pub fn push(&mut self, value: i64, payload: Payload) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back(QueuedMessage {
            bytes: encode(value),
            payload,
        });
        true
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Sends as much as the socket takes. `shm` is the fd for `Payload::Shm`.
    pub fn flush(&mut self, shm: BorrowedFd<'_>) -> io::Result<Flush> {
        while let Some(front) = self.queue.front() {
            // The fd goes with the first byte of its message, only once.
            let fd = match (&front.payload, self.sent) {
                (Payload::Shm, 0) => Some(shm),
                (Payload::Event(e), 0) => Some(borrow(e)),
                _ => None,
            };
            match send_raw(self.sock.as_fd(), &front.bytes[self.sent..], fd) {
                Ok(n) => {
                    self.sent += n;
                    if self.sent >= MESSAGE_LEN {
                        self.sent = 0;
                        self.queue.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flush::Blocked),
                Err(e) => return Err(e),
            }
        }
        Ok(Flush::Done)
    }
}

fn borrow(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd owns this fd and outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// Hands out ids round-robin over 0..=65535, skipping live ones, so an id
/// that just left is not given out again soon (a QEMU peer may still be
/// tearing down its state for it).
#[derive(Debug, Default)]
pub struct IdAllocator {
    next: u32,
}

impl IdAllocator {
    pub fn new() -> Self {
        IdAllocator { next: 0 }
    }

    /// The next free id after the last one given, or `None` if all 65536
    /// are live.
    pub fn allocate(&mut self, live: impl Fn(u16) -> bool) -> Option<u16> {
        for step in 0..=u32::from(u16::MAX) {
            let candidate = ((self.next + step) & 0xffff) as u16;
            if !live(candidate) {
                self.next = (u32::from(candidate) + 1) & 0xffff;
                return Some(candidate);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{MessageReader, Received};
    use std::collections::BTreeSet;

    #[test]
    fn ids_are_round_robin_and_not_reused_quickly() {
        let mut ids = IdAllocator::new();
        let mut live = BTreeSet::new();
        for expect in 0..3 {
            let id = ids.allocate(|i| live.contains(&i)).unwrap();
            assert_eq!(id, expect);
            live.insert(id);
        }
        live.remove(&1);
        assert_eq!(ids.allocate(|i| live.contains(&i)), Some(3));
    }

    #[test]
    fn ids_wrap_and_skip_live_ones() {
        let mut ids = IdAllocator { next: 65534 };
        let live: BTreeSet<u16> = [65535, 0].into();
        assert_eq!(ids.allocate(|i| live.contains(&i)), Some(65534));
        assert_eq!(ids.allocate(|i| live.contains(&i)), Some(1));
        assert_eq!(ids.allocate(|_| true), None, "all 65536 ids in use");
    }

    #[test]
    fn queue_is_bounded_and_flushes_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let shm = crate::shm::ShmBackend::memfd(4096, true).unwrap();
        let e = Rc::new(EventFd::new(0).unwrap());
        let mut p = Peer::new(1, 99, a, vec![]);
        p.allow_greeting(2);
        assert!(p.push(0, Payload::None));
        assert!(p.push(-1, Payload::Shm));
        for i in 0..QUEUE_SLACK - 1 {
            assert!(p.push(i as i64, Payload::None));
        }
        assert!(p.push(5, Payload::Event(e)));
        assert!(!p.push(6, Payload::None), "over the bound");
        p.flush(shm.as_fd()).unwrap();
        let mut r = MessageReader::new();
        let mut got = Vec::new();
        while got.len() < QUEUE_SLACK + 2 {
            match r.read(b.as_fd()).unwrap() {
                Received::Message(m) => got.push((m.value, m.fd.is_some())),
                Received::WouldBlock => {
                    p.flush(shm.as_fd()).unwrap();
                }
                Received::Eof { .. } => panic!("eof"),
            }
        }
        assert_eq!(got[0], (0, false));
        assert_eq!(got[1], (-1, true));
        assert_eq!(got[2], (0, false));
        assert_eq!(got[QUEUE_SLACK + 1], (5, true));
        assert_eq!(p.queued(), 0);
    }
}
