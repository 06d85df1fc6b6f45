// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The server protocol from the client's side: a random greeting (valid
//! or not) through the real [`connect_with`] over a Unix socket, then
//! random messages and fds — joins, leaves, out-of-range ids, non-eventfd
//! fds, a second shared memory, messages split across writes, the server
//! closing, mid-message too — into the [`PeerConnection`], read in random
//! slices. A model of ids and peers, written from the protocol (QEMU's
//! ivshmem-spec and our extensions), says what must come out:
//!
//! - the handshake fails with the right kind of error at the right
//!   message, or succeeds with exactly the id, peers and vectors sent;
//! - each later message gives the one event the model predicts (or none),
//!   in order; a join's fd is the very eventfd the server sent;
//! - a read of at most `max` messages consumes no more; the server's end
//!   is reported once and nothing after it.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Failure, Rng, Target, TempDir};
use crate::protocol::codec::{encode, send_message, SHM_MESSAGE};
use crate::protocol::{connect_with, ConnectOptions, HandshakeError, PeerConnection, PeerEvent};
use crate::shm::ShmBackend;

/// What a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    None,
    Eventfd,
    /// Not an eventfd (`/dev/null`).
    Other,
    /// The shared memory.
    Shm,
}

#[derive(Clone, Debug)]
pub enum PeerOp {
    /// A message from the server, sent in one write or split at byte `split`.
    Send { value: i64, fd: Fd, split: u8 },
    /// The client reads at most `max` messages.
    Read { max: usize },
    /// The server closes, after `partial` bytes of a message (0: none).
    Close { partial: u8 },
}

#[derive(Clone, Debug)]
pub struct PeerSetup {
    pub vectors: u16,
    /// The greeting, in order.
    pub greeting: Vec<(i64, Fd)>,
}

pub struct PeerTarget;

const IDS: [i64; 9] = [0, 1, 2, 3, 7, 65535, 65536, -2, i64::MIN];

fn gen_id(rng: &mut Rng) -> i64 {
    if rng.chance(1, 8) {
        rng.next_u64() as i64
    } else {
        rng.pick(&IDS)
    }
}

impl Target for PeerTarget {
    type Op = PeerOp;
    type Setup = PeerSetup;

    fn name(&self) -> &'static str {
        "server-protocol"
    }

    fn setup(&self, rng: &mut Rng) -> PeerSetup {
        let vectors = rng.pick(&[1u16, 2, 3]);
        let own = rng.pick(&[0i64, 1, 3, 65535]);
        let mut greeting = Vec::new();
        let broken = rng.chance(1, 10);
        let pick_version = if broken && rng.chance(1, 3) {
            (1, Fd::None)
        } else {
            (0, Fd::None)
        };
        greeting.push(pick_version);
        greeting.push(if broken && rng.chance(1, 3) {
            (gen_id(rng), rng.pick(&[Fd::None, Fd::Eventfd]))
        } else {
            (own, Fd::None)
        });
        // Peers already there, some leaving, then shared memory, our vectors.
        for _ in 0..rng.below(4) {
            let id = rng.pick(&[1i64, 2, 7]);
            for _ in 0..rng.below(u64::from(vectors) + 2) {
                greeting.push((id, Fd::Eventfd));
            }
            if rng.chance(1, 4) {
                greeting.push((id, Fd::None));
            }
        }
        if broken && rng.chance(1, 2) {
            greeting.push((gen_id(rng), rng.pick(&[Fd::None, Fd::Other, Fd::Eventfd])));
        }
        greeting.push((
            SHM_MESSAGE,
            if broken && rng.chance(1, 4) {
                Fd::None
            } else {
                Fd::Shm
            },
        ));
        let own_count = if rng.chance(1, 10) {
            rng.below(u64::from(vectors))
        } else {
            u64::from(vectors)
        };
        for _ in 0..own_count {
            greeting.push((own, Fd::Eventfd));
        }
        PeerSetup { vectors, greeting }
    }

    fn generate(&self, _: &PeerSetup, rng: &mut Rng, len: usize) -> Vec<PeerOp> {
        let mut ops: Vec<PeerOp> = (0..len)
            .map(|_| match rng.below(10) {
                0..=5 => PeerOp::Send {
                    value: gen_id(rng),
                    fd: match rng.below(10) {
                        0..=5 => Fd::Eventfd,
                        6..=7 => Fd::None,
                        8 => Fd::Other,
                        _ => Fd::Shm,
                    },
                    split: if rng.chance(1, 5) {
                        1 + rng.below(7) as u8
                    } else {
                        0
                    },
                },
                _ => PeerOp::Read {
                    max: rng.pick(&[1, 2, 5, 64]),
                },
            })
            .collect();
        if rng.chance(1, 3) {
            ops.push(PeerOp::Close {
                partial: rng.pick(&[0, 0, 3]),
            });
        }
        ops
    }

    fn execute(&self, setup: &PeerSetup, ops: &[PeerOp]) -> Result<(), Failure> {
        let fail = |step, what: String| Failure { step, what };
        let mut h = match Harness::start(setup) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()), // the handshake failed as it should
            Err(what) => return Err(fail(0, format!("handshake: {what}"))),
        };
        for (step, op) in ops.iter().enumerate() {
            h.apply(op).map_err(|w| fail(step, w))?;
        }
        h.apply(&PeerOp::Read { max: usize::MAX })
            .map_err(|w| fail(ops.len().saturating_sub(1), format!("final drain: {w}")))
    }
}

/// A message in the socket, not yet read.
#[derive(Debug)]
enum Queued {
    Message {
        value: i64,
        fd: Fd,
        sent: Option<EventFd>,
    },
    Gone,
}

/// What the model expects a message to produce.
#[derive(Debug)]
enum Expect {
    Nothing,
    Joined { id: u16, vector: u16, sent: EventFd },
    Left { id: u16 },
    Gone,
}

/// The peers model after the handshake (PeerConnection's contract).
struct Model {
    own: u16,
    vectors: u16,
    peers: BTreeMap<u16, u16>,
    gone: bool,
}

impl Model {
    fn message(&mut self, value: i64, fd: Fd, sent: Option<EventFd>) -> Expect {
        if value == SHM_MESSAGE || !(0..=65535).contains(&value) {
            return Expect::Nothing;
        }
        let id = value as u16;
        match fd {
            Fd::None => match self.peers.remove(&id) {
                Some(_) => Expect::Left { id },
                None => Expect::Nothing,
            },
            Fd::Other | Fd::Shm => Expect::Nothing,
            Fd::Eventfd if id == self.own => Expect::Nothing,
            Fd::Eventfd => {
                let n = self.peers.entry(id).or_insert(0);
                let vector = *n;
                *n = n.saturating_add(1);
                match sent {
                    Some(sent) if vector < self.vectors => Expect::Joined { id, vector, sent },
                    _ => Expect::Nothing,
                }
            }
        }
    }
}

struct Harness {
    server: Option<UnixStream>,
    conn: PeerConnection,
    model: Model,
    /// Messages sent, not yet read, with what each must give.
    queue: VecDeque<Queued>,
    null: File,
    shm: ShmBackend,
    _dir: TempDir,
}

/// Checks that `got` is the same eventfd as `sent`.
fn same_eventfd(sent: &EventFd, got: &EventFd) -> bool {
    sent.write(1).is_ok() && matches!(got.read(), Ok(1))
}

fn fd_of<'a>(
    fd: Fd,
    ev: &'a Option<EventFd>,
    null: &'a File,
    shm: &'a ShmBackend,
) -> Option<BorrowedFd<'a>> {
    match fd {
        Fd::None => None,
        // SAFETY: the EventFd outlives the borrow.
        Fd::Eventfd => ev
            .as_ref()
            .map(|e| unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }),
        Fd::Other => Some(null.as_fd()),
        Fd::Shm => Some(shm.file().as_fd()),
    }
}

/// The greeting as the protocol defines it: where it fails, or what it gives.
enum GreetingOutcome {
    Fails(&'static str),
    Joins {
        own: u16,
        peers: BTreeMap<u16, usize>,
        own_vectors: usize,
        /// Messages of the greeting up to and including the completing one.
        rest: usize,
    },
}

fn model_greeting(setup: &PeerSetup) -> GreetingOutcome {
    let v = usize::from(setup.vectors);
    let mut it = setup.greeting.iter().enumerate();
    match it.next() {
        Some((_, (0, Fd::None))) => {}
        Some((_, (0, _))) => return GreetingOutcome::Fails("malformed"),
        _ => return GreetingOutcome::Fails("version"),
    }
    let own = match it.next() {
        Some((_, (id, Fd::None))) if (0..=65535).contains(id) => *id as u16,
        _ => return GreetingOutcome::Fails("malformed"),
    };
    let (mut shm, mut peers, mut own_n) = (false, BTreeMap::<u16, usize>::new(), 0usize);
    for (i, &(value, fd)) in it {
        if value == SHM_MESSAGE {
            match fd {
                Fd::None => return GreetingOutcome::Fails("malformed"),
                _ if shm => return GreetingOutcome::Fails("malformed"),
                // Memory must be a regular file or memfd (the trust rules).
                Fd::Other | Fd::Eventfd => return GreetingOutcome::Fails("wrong fd"),
                Fd::Shm => shm = true,
            }
        } else if !(0..=65535).contains(&value) {
            return GreetingOutcome::Fails("malformed");
        } else {
            let id = value as u16;
            match fd {
                Fd::None if id == own => return GreetingOutcome::Fails("malformed"),
                Fd::None => {
                    peers.remove(&id);
                }
                // A doorbell must be an eventfd (the trust rules).
                Fd::Other | Fd::Shm => return GreetingOutcome::Fails("wrong fd"),
                Fd::Eventfd if id == own => own_n = (own_n + 1).min(v),
                Fd::Eventfd => {
                    let n = peers.entry(id).or_insert(0);
                    *n = (*n + 1).min(v);
                }
            }
        }
        if shm && own_n >= v {
            return GreetingOutcome::Joins {
                own,
                peers,
                own_vectors: own_n,
                rest: i + 1,
            };
        }
    }
    GreetingOutcome::Fails("closed")
}

impl Harness {
    /// Runs the greeting; `None` when it failed as the model says it must.
    fn start(setup: &PeerSetup) -> Result<Option<Harness>, String> {
        let dir = TempDir::new("fuzz")?;
        let path = dir.0.join("sock");
        let listener = UnixListener::bind(&path).map_err(|e| e.to_string())?;
        let null = File::open("/dev/null").map_err(|e| e.to_string())?;
        let shm = ShmBackend::memfd(1 << 16, true).map_err(|e| e.to_string())?;
        let expected = model_greeting(setup);
        let (to_send, rest) = match &expected {
            GreetingOutcome::Joins { rest, .. } => (*rest, setup.greeting.len() - rest),
            GreetingOutcome::Fails(_) => (setup.greeting.len(), 0),
        };
        let fails = matches!(expected, GreetingOutcome::Fails(_));
        let greeting = setup.greeting.clone();
        let shm_file = shm.file().try_clone().map_err(|e| e.to_string())?;
        let null2 = null.try_clone().map_err(|e| e.to_string())?;
        // The server's side runs beside connect_with, which blocks.
        let server = std::thread::spawn(
            move || -> Result<(UnixStream, Vec<Option<EventFd>>), String> {
                let (s, _) = listener.accept().map_err(|e| e.to_string())?;
                let mut sent = Vec::new();
                for &(value, fd) in &greeting[..to_send] {
                    let ev = (fd == Fd::Eventfd)
                        .then(|| EventFd::new(EFD_NONBLOCK))
                        .transpose()
                        .map_err(|e| e.to_string())?;
                    let b = match fd {
                        Fd::None => None,
                        // SAFETY: the EventFd outlives the borrow.
                        Fd::Eventfd => ev
                            .as_ref()
                            .map(|e| unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }),
                        Fd::Other => Some(null2.as_fd()),
                        Fd::Shm => Some(shm_file.as_fd()),
                    };
                    // The client may have given up already (a failed greeting).
                    if send_message(s.as_fd(), value, b).is_err() {
                        break;
                    }
                    sent.push(ev);
                }
                if fails {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                Ok((s, sent))
            },
        );
        let mut opts = ConnectOptions::new(setup.vectors, Duration::from_secs(5));
        // Long enough that a slow server thread never looks quiet: every
        // greeting here ends by completing or by the server closing.
        opts.quiet = Duration::from_secs(5);
        let result = connect_with(&path, &opts);
        let (server, sent) = server
            .join()
            .map_err(|_| "the server thread panicked".to_string())??;
        let (own, peers, own_vectors, (conn, hs)) = match (expected, result) {
            (GreetingOutcome::Fails(kind), Err(e)) => {
                let ok = matches!(
                    (kind, &e),
                    ("version", HandshakeError::Version { .. })
                        | ("malformed", HandshakeError::Malformed { .. })
                        | ("wrong fd", HandshakeError::WrongFd { .. })
                        | ("closed", HandshakeError::Closed { .. })
                );
                return if ok {
                    Ok(None)
                } else {
                    Err(format!("expected a {kind} error, got: {e}"))
                };
            }
            (GreetingOutcome::Fails(kind), Ok(_)) => {
                return Err(format!("expected a {kind} error, the handshake succeeded"))
            }
            (GreetingOutcome::Joins { .. }, Err(e)) => return Err(format!("failed: {e}")),
            (
                GreetingOutcome::Joins {
                    own,
                    peers,
                    own_vectors,
                    ..
                },
                Ok(ok),
            ) => (own, peers, own_vectors, ok),
        };
        if hs.id != own || conn.id() != own {
            return Err(format!(
                "our id is {} / {}, the server said {own}",
                hs.id,
                conn.id()
            ));
        }
        let got: BTreeMap<u16, usize> = hs.peers.iter().map(|(id, v)| (*id, v.len())).collect();
        if got != peers || hs.own.len() != own_vectors {
            return Err(format!(
                "peers {got:?} and {} own vectors, the server sent {peers:?} and {own_vectors}",
                hs.own.len()
            ));
        }
        // Each fd is the very eventfd sent: replay the greeting's rules.
        let v = usize::from(setup.vectors);
        let mut sent_peers: BTreeMap<u16, Vec<&EventFd>> = BTreeMap::new();
        let mut sent_own: Vec<&EventFd> = Vec::new();
        for (&(value, fd), ev) in setup.greeting[2..to_send].iter().zip(&sent[2..]) {
            let Ok(id) = u16::try_from(value) else {
                continue;
            };
            match (fd, ev) {
                (Fd::None, _) => {
                    sent_peers.remove(&id);
                }
                (Fd::Eventfd, Some(ev)) if id == own && sent_own.len() < v => sent_own.push(ev),
                (Fd::Eventfd, Some(_)) if id == own => {} // extras are closed
                (Fd::Eventfd, Some(ev)) => {
                    let list = sent_peers.entry(id).or_default();
                    if list.len() < v {
                        list.push(ev)
                    }
                }
                _ => {}
            }
        }
        for (i, (sent, got)) in sent_own.iter().zip(&hs.own).enumerate() {
            if !same_eventfd(sent, got) {
                return Err(format!("own vector {i} is not the eventfd the server sent"));
            }
        }
        for (id, list) in &sent_peers {
            for (i, (sent, got)) in list.iter().zip(&hs.peers[id]).enumerate() {
                if !same_eventfd(sent, got) {
                    return Err(format!(
                        "peer {id} vector {i} is not the eventfd the server sent"
                    ));
                }
            }
        }
        let model = Model {
            own,
            vectors: setup.vectors,
            peers: peers.iter().map(|(id, n)| (*id, *n as u16)).collect(),
            gone: false,
        };
        let mut h = Harness {
            server: Some(server),
            conn,
            model,
            queue: VecDeque::new(),
            null,
            shm,
            _dir: dir,
        };
        // What followed the completing message is ordinary traffic.
        for &(value, fd) in &setup.greeting[to_send..to_send + rest] {
            h.apply(&PeerOp::Send {
                value,
                fd,
                split: 0,
            })?;
        }
        Ok(Some(h))
    }

    fn apply(&mut self, op: &PeerOp) -> Result<(), String> {
        match *op {
            PeerOp::Send { value, fd, split } => {
                if self.server.is_none() {
                    return Ok(());
                }
                if self.queue.len() >= 64 {
                    self.read(64)?;
                }
                let Some(server) = &self.server else {
                    return Ok(());
                };
                let ev = match fd {
                    Fd::Eventfd => Some(EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?),
                    _ => None,
                };
                let borrowed = fd_of(fd, &ev, &self.null, &self.shm);
                let bytes = encode(value);
                let at = usize::from(split).min(7);
                if at == 0 {
                    send_message(server.as_fd(), value, borrowed).map_err(|e| e.to_string())?;
                } else {
                    // The fd rides with the first part, as a server may send it.
                    let n =
                        crate::protocol::codec::send_raw(server.as_fd(), &bytes[..at], borrowed)
                            .map_err(|e| e.to_string())?;
                    (&*server)
                        .write_all(&bytes[n..])
                        .map_err(|e| e.to_string())?;
                }
                let sent = ev
                    .map(|e| e.try_clone())
                    .transpose()
                    .map_err(|e| e.to_string())?;
                self.queue.push_back(Queued::Message { value, fd, sent });
                Ok(())
            }
            PeerOp::Read { max } => self.read(max),
            PeerOp::Close { partial } => {
                if let Some(server) = self.server.take() {
                    if partial > 0 {
                        let bytes = encode(1);
                        (&server)
                            .write_all(&bytes[..usize::from(partial).min(7)])
                            .map_err(|e| e.to_string())?;
                    }
                    self.queue.push_back(Queued::Gone);
                }
                Ok(())
            }
        }
    }

    /// Reads at most `max` messages and compares the events with the
    /// model's, in order.
    fn read(&mut self, max: usize) -> Result<(), String> {
        let events = self.conn.read_events_max(max);
        let mut events = events.into_iter();
        let mut consumed = 0;
        while consumed < max && !self.model.gone {
            let expect = match self.queue.pop_front() {
                None => break,
                Some(Queued::Gone) => Expect::Gone,
                Some(Queued::Message { value, fd, sent }) => self.model.message(value, fd, sent),
            };
            consumed += 1;
            match expect {
                Expect::Nothing => {}
                Expect::Gone => {
                    self.model.gone = true;
                    match events.next() {
                        Some(PeerEvent::ServerGone) => {}
                        other => return Err(format!("expected ServerGone, got {other:?}")),
                    }
                }
                Expect::Left { id } => match events.next() {
                    Some(PeerEvent::PeerLeft { id: got }) if got == id => {}
                    other => return Err(format!("expected peer {id} to leave, got {other:?}")),
                },
                Expect::Joined { id, vector, sent } => match events.next() {
                    Some(PeerEvent::PeerJoined {
                        id: gid,
                        vector: gv,
                        fd,
                    }) if gid == id && gv == vector => {
                        if !same_eventfd(&sent, &fd) {
                            return Err(format!("peer {id} vector {vector}: not the eventfd sent"));
                        }
                    }
                    other => {
                        return Err(format!(
                            "expected peer {id} vector {vector} to join, got {other:?}"
                        ))
                    }
                },
            }
        }
        if let Some(extra) = events.next() {
            return Err(format!(
                "an event the model did not expect: {extra:?} (read max {max})"
            ));
        }
        if self.conn.is_gone() != self.model.gone {
            return Err(format!(
                "gone: {}, the model says {}",
                self.conn.is_gone(),
                self.model.gone
            ));
        }
        let ids: Vec<u16> = self.conn.peer_ids().collect();
        let want: Vec<u16> = self.model.peers.keys().copied().collect();
        if ids != want {
            return Err(format!("peers {ids:?}, the model has {want:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::run;

    #[test]
    fn the_protocol_passes_a_short_run() {
        let out = run(&PeerTarget, 3, 3_000, 100);
        assert_eq!(out.failures, 0, "{}", out.report.unwrap_or_default());
    }

    #[test]
    fn a_wrong_model_is_caught() {
        // A join for our own id must give nothing; claiming it does fails.
        let setup = PeerSetup {
            vectors: 1,
            greeting: vec![
                (0, Fd::None),
                (3, Fd::None),
                (SHM_MESSAGE, Fd::Shm),
                (3, Fd::Eventfd),
            ],
        };
        let mut h = Harness::start(&setup).unwrap().unwrap();
        h.apply(&PeerOp::Send {
            value: 5,
            fd: Fd::Eventfd,
            split: 3,
        })
        .unwrap();
        h.apply(&PeerOp::Read { max: 64 }).unwrap();
        assert_eq!(h.conn.peer_ids().collect::<Vec<_>>(), vec![5]);
        h.apply(&PeerOp::Send {
            value: 3,
            fd: Fd::Eventfd,
            split: 0,
        })
        .unwrap();
        // Tell the model it was a leave of peer 5 instead.
        h.queue.pop_back();
        h.queue.push_back(Queued::Message {
            value: 5,
            fd: Fd::None,
            sent: None,
        });
        let e = h.apply(&PeerOp::Read { max: 64 }).unwrap_err();
        assert!(e.contains("expected peer 5 to leave"), "{e}");
    }
}
