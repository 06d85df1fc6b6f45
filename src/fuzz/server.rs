// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The `ivvmm server` target: a real server in a thread, real peers over its
//! UNIX socket joining, leaving, and misbehaving (sending bytes, which makes
//! the server drop them) in random order, checked against a model of ids and
//! peers:
//! - a joiner's handshake gives an id no present peer has, exactly the
//!   present peers with `vectors` eventfds each, and `vectors` of its own;
//! - every present peer is told, in order, of each later join (one message
//!   per vector) and each leave or drop — nothing else;
//! - a peer that sends anything is disconnected by the server;
//! - the server is still running at the end and stops on its stop event.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::{Failure, Rng, Target, TempDir};
use crate::protocol::{connect_with, ConnectOptions, PeerConnection, PeerEvent};
use crate::server::{Server, ServerConfig};
use crate::shm::{ShmSource, Trust};

/// How long a peer waits for what the model expects before that is a failure.
const WAIT: Duration = Duration::from_secs(3);

pub struct ServerTarget;

#[derive(Clone, Debug)]
pub struct ServerSetup {
    vectors: u16,
}

#[derive(Clone, Debug)]
pub enum ServerOp {
    Join,
    /// Closes peer (index mod the number connected).
    Leave(usize),
    /// Peer sends these bytes: the server drops it.
    Babble(usize, Vec<u8>),
}

impl Target for ServerTarget {
    type Op = ServerOp;
    type Setup = ServerSetup;

    fn name(&self) -> &'static str {
        "ivvmm-server"
    }

    fn setup(&self, rng: &mut Rng) -> ServerSetup {
        ServerSetup {
            vectors: 1 + rng.below(3) as u16,
        }
    }

    fn generate(&self, _: &ServerSetup, rng: &mut Rng, len: usize) -> Vec<ServerOp> {
        (0..len)
            .map(|_| match rng.below(10) {
                0..=4 => ServerOp::Join,
                5..=7 => ServerOp::Leave(rng.below(8) as usize),
                _ => {
                    let n = 1 + rng.below(12) as usize;
                    ServerOp::Babble(
                        rng.below(8) as usize,
                        (0..n).map(|_| rng.below(256) as u8).collect(),
                    )
                }
            })
            .collect()
    }

    fn execute(&self, setup: &ServerSetup, ops: &[ServerOp]) -> Result<(), Failure> {
        let mut run = Run::start(setup).map_err(|e| Failure { step: 0, what: e })?;
        for (i, op) in ops.iter().enumerate() {
            run.apply(op).map_err(|e| Failure { step: i, what: e })?;
        }
        run.finish().map_err(|e| Failure {
            step: ops.len(),
            what: e,
        })
    }
}

struct Peer {
    conn: PeerConnection,
    /// What the server must tell this peer next, in order.
    expect: VecDeque<PeerEvent>,
}

struct Run {
    vectors: u16,
    socket: PathBuf,
    /// Removed after Drop has joined the server thread (fields drop last).
    _dir: TempDir,
    stop: EventFd,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Present peers by id, in join order of the model.
    peers: BTreeMap<u16, Peer>,
    /// A peer that never leaves: it sees every join and leave, so the
    /// model waits for the server to have handled a leave before the next
    /// operation even when no other peer is there to tell.
    observer: u16,
}

impl Run {
    fn start(setup: &ServerSetup) -> Result<Run, String> {
        let dir = TempDir::new("fuzz-srv")?;
        let socket = dir.path().join("sock");
        let config = ServerConfig {
            socket: socket.clone(),
            size: 64 << 10,
            vectors: setup.vectors,
            shm: ShmSource::Memfd,
            keep_shm: false,
            trust: Trust::Ours,
            peer_uids: Vec::new(),
        };
        let stop = EventFd::new(0).map_err(|e| e.to_string())?;
        let stop_fd = stop.try_clone().map_err(|e| e.to_string())?;
        // The server is not Send (it holds Rc'd eventfds): built in its thread.
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut server = match Server::new(&config) {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Ok(());
                }
            };
            // SAFETY: `stop_fd` owns this descriptor and outlives the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(stop_fd.as_raw_fd()) };
            server
                .run(fd)
                .map_err(|e| format!("the server failed: {e}"))
        });
        ready
            .recv()
            .map_err(|_| "the server thread died".to_string())??;
        let mut run = Run {
            vectors: setup.vectors,
            socket,
            _dir: dir,
            stop,
            thread: Some(thread),
            peers: BTreeMap::new(),
            observer: 0,
        };
        run.join()?;
        run.observer = *run.peers.keys().next().ok_or("no observer")?;
        Ok(run)
    }

    /// The `i`th present peer (mod their number), the observer excepted.
    fn nth(&self, i: usize) -> Option<u16> {
        let others: Vec<u16> = self
            .peers
            .keys()
            .copied()
            .filter(|&id| id != self.observer)
            .collect();
        (!others.is_empty()).then(|| others[i % others.len()])
    }

    fn apply(&mut self, op: &ServerOp) -> Result<(), String> {
        match op {
            ServerOp::Join => self.join()?,
            ServerOp::Leave(i) => {
                if let Some(id) = self.nth(*i) {
                    self.peers.remove(&id);
                    self.told_left(id);
                }
            }
            ServerOp::Babble(i, bytes) => {
                if let Some(id) = self.nth(*i) {
                    let peer = self.peers.remove(&id).ok_or("model lost a peer")?;
                    let mut sock = UnixStream::from(
                        peer.conn
                            .as_fd()
                            .try_clone_to_owned()
                            .map_err(|e| e.to_string())?,
                    );
                    let _ = sock.write_all(bytes);
                    wait_closed(&sock)
                        .map_err(|e| format!("peer {id} babbled {bytes:02x?}: {e}"))?;
                    self.told_left(id);
                }
            }
        }
        self.check_told()
    }

    fn told_left(&mut self, id: u16) {
        for p in self.peers.values_mut() {
            p.expect.push_back(PeerEvent::PeerLeft { id });
        }
    }

    fn join(&mut self) -> Result<(), String> {
        let mut opts = ConnectOptions::new(self.vectors, WAIT);
        // Complete greetings end by themselves; this never actually waits.
        opts.quiet = WAIT;
        let (conn, hs) = connect_with(&self.socket, &opts).map_err(|e| format!("join: {e}"))?;
        let id = hs.id;
        if self.peers.contains_key(&id) {
            return Err(format!("the server gave id {id}, which a present peer has"));
        }
        let want: BTreeSet<u16> = self.peers.keys().copied().collect();
        let got: BTreeSet<u16> = hs.peers.keys().copied().collect();
        if got != want {
            return Err(format!(
                "joiner {id} was told peers {got:?}, present are {want:?}"
            ));
        }
        if let Some((p, v)) = hs
            .peers
            .iter()
            .find(|(_, v)| v.len() != usize::from(self.vectors))
        {
            return Err(format!(
                "peer {p} came with {} vectors, not {}",
                v.len(),
                self.vectors
            ));
        }
        if hs.own.len() != usize::from(self.vectors) {
            return Err(format!(
                "joiner got {} own vectors, not {}",
                hs.own.len(),
                self.vectors
            ));
        }
        for p in self.peers.values_mut() {
            for vector in 0..self.vectors {
                p.expect.push_back(PeerEvent::PeerJoined {
                    id,
                    vector,
                    fd: EventFd::new(0).map_err(|e| e.to_string())?,
                });
            }
        }
        self.peers.insert(
            id,
            Peer {
                conn,
                expect: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// Every peer got what it was owed, in order, and nothing more.
    fn check_told(&mut self) -> Result<(), String> {
        for (me, p) in &mut self.peers {
            let deadline = Instant::now() + WAIT;
            while let Some(want) = p.expect.front() {
                let got = p.conn.read_events_max(1);
                let Some(event) = got.into_iter().next() else {
                    if Instant::now() > deadline {
                        return Err(format!("peer {me} still waits for {}", describe(want)));
                    }
                    wait_readable(&p.conn, Duration::from_millis(50));
                    continue;
                };
                if !same(&event, want) {
                    return Err(format!(
                        "peer {me} was told {}, expected {}",
                        describe(&event),
                        describe(want)
                    ));
                }
                p.expect.pop_front();
            }
            if let Some(extra) = p.conn.read_events_max(1).into_iter().next() {
                return Err(format!(
                    "peer {me} was told {} it should not have been",
                    describe(&extra)
                ));
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), String> {
        let thread = self.thread.take().ok_or("no server thread")?;
        if thread.is_finished() {
            return thread
                .join()
                .map_err(|_| "the server panicked".to_string())?
                .and(Err("the server stopped by itself".into()));
        }
        let _ = self.stop.write(1);
        thread
            .join()
            .map_err(|_| "the server panicked".to_string())?
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.stop.write(1);
            let _ = t.join();
        }
    }
}

fn same(a: &PeerEvent, b: &PeerEvent) -> bool {
    match (a, b) {
        (
            PeerEvent::PeerJoined { id, vector, .. },
            PeerEvent::PeerJoined {
                id: i2, vector: v2, ..
            },
        ) => id == i2 && vector == v2,
        (PeerEvent::PeerLeft { id }, PeerEvent::PeerLeft { id: i2 }) => id == i2,
        (PeerEvent::ServerGone, PeerEvent::ServerGone) => true,
        _ => false,
    }
}

fn describe(e: &PeerEvent) -> String {
    match e {
        PeerEvent::PeerJoined { id, vector, .. } => format!("peer {id} vector {vector} joined"),
        PeerEvent::PeerLeft { id } => format!("peer {id} left"),
        PeerEvent::ServerGone => "the server is gone".into(),
    }
}

fn wait_readable(fd: &impl AsFd, timeout: Duration) {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    let t = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, t);
}

/// The server must close a peer that sent it anything (the socket is
/// non-blocking: poll, then read what is left until end-of-file).
fn wait_closed(sock: &UnixStream) -> Result<(), String> {
    use std::io::Read;
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 64];
    let mut s = sock;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue, // messages queued before the drop
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(format!("not disconnected by the server within {WAIT:?}"));
                }
                wait_readable(sock, Duration::from_millis(50));
            }
            Err(e) => return Err(format!("reading after babbling: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::execute_caught;

    #[test]
    fn the_real_server_passes_a_short_run() {
        let setup = ServerSetup { vectors: 2 };
        let ops = ServerTarget.generate(&setup, &mut Rng::new(7), 40);
        execute_caught(&ServerTarget, &setup, &ops).unwrap();
    }

    #[test]
    fn a_peer_that_is_not_told_of_a_join_fails_the_check() {
        let setup = ServerSetup { vectors: 1 };
        let mut run = Run::start(&setup).unwrap();
        run.apply(&ServerOp::Join).unwrap();
        run.apply(&ServerOp::Join).unwrap();
        // The model now owes the first peer a leave that never happens.
        let first = *run.peers.keys().next().unwrap();
        let other = *run.peers.keys().nth(1).unwrap();
        run.peers
            .get_mut(&first)
            .unwrap()
            .expect
            .push_back(PeerEvent::PeerLeft { id: other });
        let err = run.check_told().unwrap_err();
        assert!(err.contains("still waits for"), "{err}");
    }
}
