// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Handshake and peer-event tests against scripted fake servers.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::protocol::codec::{send_message, send_raw};
use crate::protocol::{handshake, PeerEvent};
use crate::shm::ShmBackend;

const T: Duration = Duration::from_secs(5);

struct Fake {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn sock_path() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ivvmm-proto-{}-{n}.sock", std::process::id()))
}

/// A server that accepts one connection and runs `script` on it.
fn fake(script: impl FnOnce(UnixStream) + Send + 'static) -> Fake {
    let path = sock_path();
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        script(s);
    });
    Fake {
        path,
        thread: Some(thread),
    }
}

fn send(s: &UnixStream, v: i64, fd: Option<BorrowedFd<'_>>) {
    send_message(s.as_fd(), v, fd).unwrap();
}

fn efd_of(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the EventFd outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

fn efds(n: usize) -> Vec<EventFd> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect()
}

/// Sends version, `id` and a 1M memfd.
fn greet(s: &UnixStream, id: i64) {
    let shm = ShmBackend::memfd(1 << 20, true).unwrap();
    send(s, 0, None);
    send(s, id, None);
    send(s, -1, Some(shm.file().as_fd()));
}

/// Waits until the client closes its end (so fds stay valid meanwhile).
fn wait_close(s: &UnixStream) {
    s.set_read_timeout(Some(T)).unwrap();
    let _ = std::io::Read::read(&mut &*s, &mut [0u8; 1]);
}

#[test]
fn full_handshake_then_events() {
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fake(move |s| {
        let p1 = efds(2);
        let p2 = efds(2);
        let own = efds(2);
        greet(&s, 3);
        for (id, fds) in [(1, &p1), (2, &p2), (3, &own)] {
            for e in fds.iter() {
                send(&s, id, Some(efd_of(e)));
            }
        }
        let p5 = efds(2);
        for e in &p5 {
            send(&s, 5, Some(efd_of(e)));
        }
        send(&s, 1, None);
        tx.send(()).unwrap();
        wait_close(&s);
        // The client rang our vector 1 of peer 2 and we can see it.
        assert_eq!(p2[1].read().unwrap(), 1);
        assert_eq!(own[0].read().unwrap(), 9);
    });
    let (mut conn, hs) = connect(&f.path, 2, T).unwrap();
    assert_eq!(hs.id, 3);
    assert_eq!(conn.id(), 3);
    assert_eq!(hs.shm.size(), 1 << 20);
    assert_eq!(hs.peers.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    assert!(hs.peers.values().all(|v| v.len() == 2));
    assert_eq!(hs.own.len(), 2);
    hs.peers[&2][1].write(1).unwrap();
    hs.own[0].write(9).unwrap();
    rx.recv().unwrap();
    let events = conn.read_events();
    let summary: Vec<String> = events
        .iter()
        .map(|e| match e {
            PeerEvent::PeerJoined { id, vector, .. } => format!("join {id}.{vector}"),
            PeerEvent::PeerLeft { id } => format!("left {id}"),
            PeerEvent::ServerGone => "gone".into(),
        })
        .collect();
    assert_eq!(summary, ["join 5.0", "join 5.1", "left 1"]);
    assert_eq!(conn.peer_ids().collect::<Vec<_>>(), vec![2, 5]);
    drop(hs);
    drop(conn);
}

#[test]
fn extra_vectors_from_the_server_are_closed() {
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fake(move |s| {
        let p1 = efds(3);
        let own = efds(3);
        greet(&s, 0);
        for e in &p1 {
            send(&s, 1, Some(efd_of(e)));
        }
        for e in &own {
            send(&s, 0, Some(efd_of(e)));
        }
        let p2 = efds(3);
        for e in &p2 {
            send(&s, 2, Some(efd_of(e)));
        }
        tx.send(()).unwrap();
        wait_close(&s);
    });
    let (mut conn, hs) = connect(&f.path, 2, T).unwrap();
    assert_eq!(hs.own.len(), 2);
    assert_eq!(hs.peers[&1].len(), 2);
    rx.recv().unwrap();
    let joins = conn
        .read_events()
        .into_iter()
        .filter(|e| matches!(e, PeerEvent::PeerJoined { .. }))
        .count();
    assert_eq!(joins, 2, "peer 2's third vector is beyond ours");
}

#[test]
fn fewer_vectors_are_accepted_after_a_quiet_period() {
    let f = fake(|s| {
        let own = efds(1);
        greet(&s, 4);
        send(&s, 4, Some(efd_of(&own[0])));
        wait_close(&s);
    });
    let start = Instant::now();
    let (_conn, hs) = connect(&f.path, 4, T).unwrap();
    let took = start.elapsed();
    assert_eq!(hs.own.len(), 1);
    assert!(took >= handshake::DEFAULT_QUIET, "{took:?}");
    assert!(took < T, "{took:?}");
}

#[test]
fn missing_and_stale_sockets_have_their_own_errors() {
    let path = sock_path();
    let e = connect(&path, 1, T).unwrap_err();
    assert!(matches!(e, HandshakeError::NoSocket(_)), "{e}");
    assert!(e.to_string().contains("ivvmm server -S"), "{e}");
    drop(UnixListener::bind(&path).unwrap());
    let e = connect(&path, 1, T).unwrap_err();
    assert!(matches!(e, HandshakeError::Refused(_)), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn silent_server_times_out() {
    let f = fake(|s| wait_close(&s));
    let start = Instant::now();
    let e = connect(&f.path, 1, Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, HandshakeError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("sent nothing"), "{e}");
}

#[test]
fn server_without_shared_memory_times_out_saying_so() {
    let f = fake(|s| {
        let own = efds(1);
        send(&s, 0, None);
        send(&s, 1, None);
        send(&s, 1, Some(efd_of(&own[0])));
        wait_close(&s);
    });
    let e = connect(&f.path, 1, Duration::from_millis(300)).unwrap_err();
    assert!(e.to_string().contains("no shared memory"), "{e}");
}

#[test]
fn closing_server_is_an_error_not_a_spin() {
    let f = fake(|s| send(&s, 0, None));
    let e = connect(&f.path, 1, T).unwrap_err();
    assert!(matches!(e, HandshakeError::Closed { .. }), "{e}");
    assert!(e.to_string().contains("only the protocol version"), "{e}");
}

#[test]
fn wrong_version_is_refused() {
    let f = fake(|s| {
        send(&s, 1, None);
        wait_close(&s);
    });
    let e = connect(&f.path, 1, T).unwrap_err();
    assert!(
        matches!(e, HandshakeError::Version { version: 1, .. }),
        "{e}"
    );
}

fn malformed_with(script: impl FnOnce(&UnixStream) + Send + 'static) -> String {
    let f = fake(move |s| {
        script(&s);
        wait_close(&s);
    });
    let e = connect(&f.path, 1, T).unwrap_err();
    assert!(matches!(e, HandshakeError::Malformed { .. }), "{e}");
    e.to_string()
}

#[test]
fn malformed_greetings_are_refused() {
    let e = malformed_with(|s| {
        send(s, 0, None);
        send(s, 70000, None);
    });
    assert!(e.contains("70000"), "{e}");
    let e = malformed_with(|s| {
        let x = efds(1);
        send(s, 0, Some(efd_of(&x[0])));
    });
    assert!(e.contains("version"), "{e}");
    let e = malformed_with(|s| {
        send(s, 0, None);
        send(s, 2, None);
        send(s, -1, None);
    });
    assert!(e.contains("without an fd"), "{e}");
    let e = malformed_with(|s| {
        greet(s, 2);
        send(s, -5, None);
    });
    assert!(e.contains("-5"), "{e}");
}

fn wrong_fd_with(script: impl FnOnce(&UnixStream) + Send + 'static) -> String {
    let f = fake(move |s| {
        script(&s);
        wait_close(&s);
    });
    let e = connect(&f.path, 1, T).unwrap_err();
    assert!(matches!(e, HandshakeError::WrongFd { .. }), "{e}");
    e.to_string()
}

#[test]
fn fds_that_are_not_what_they_claim_end_the_handshake() {
    let e = wrong_fd_with(|s| {
        let (r, _w) = nix::unistd::pipe().unwrap();
        greet(s, 2);
        send(s, 1, Some(r.as_fd()));
    });
    assert!(e.contains("sent a pipe as a doorbell of peer 1"), "{e}");
    assert!(e.contains("an eventfd"), "{e}");
    let e = wrong_fd_with(|s| {
        let (a, _b) = UnixStream::pair().unwrap();
        send(s, 0, None);
        send(s, 2, None);
        send(s, -1, Some(a.as_fd()));
    });
    assert!(e.contains("sent a socket as the shared memory"), "{e}");
    let e = wrong_fd_with(|s| {
        let null = std::fs::File::open("/dev/null").unwrap();
        greet(s, 2);
        send(s, 2, Some(null.as_fd()));
    });
    assert!(e.contains("character device (/dev/null)"), "{e}");
}

#[test]
fn unsealed_memfd_from_a_server_is_accepted() {
    let f = fake(|s| {
        let shm = ShmBackend::memfd(1 << 20, false).unwrap();
        let own = efds(1);
        send(&s, 0, None);
        send(&s, 0, None);
        send(&s, -1, Some(shm.file().as_fd()));
        send(&s, 0, Some(efd_of(&own[0])));
        wait_close(&s);
    });
    let (_conn, hs) = connect(&f.path, 1, T).unwrap();
    assert_eq!(hs.shm.size(), 1 << 20);
}

#[test]
fn a_socket_of_another_user_is_refused_unless_named() {
    let f = fake(|s| {
        greet(&s, 0);
        let own = efds(1);
        send(&s, 0, Some(efd_of(&own[0])));
        wait_close(&s);
    });
    let nobody = nix::unistd::Uid::from_raw(65534);
    if nix::unistd::chown(&f.path, Some(nobody), None).is_err() {
        eprintln!("skipped: only root can give a socket to another user");
        // Let the fake server finish.
        let _ = connect(&f.path, 1, T);
        return;
    }
    let e = connect(&f.path, 1, T).unwrap_err();
    assert!(
        matches!(e, HandshakeError::ForeignSocket { uid: 65534, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("--server-uid 65534"), "{e}");
    let mut opts = ConnectOptions::new(1, T);
    opts.server_uid = Some(65534);
    // Named: the socket passes, and the process behind it runs as us.
    let (_conn, hs) = connect_with(&f.path, &opts).unwrap();
    assert_eq!(hs.own.len(), 1);
}

#[test]
fn garbage_after_the_handshake_is_ignored_then_server_gone() {
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fake(move |s| {
        let own = efds(1);
        greet(&s, 0);
        send(&s, 0, Some(efd_of(&own[0])));
        let shm = ShmBackend::memfd(4096, false).unwrap();
        send(&s, -1, Some(shm.file().as_fd()));
        send(&s, -7, None);
        send(&s, 1 << 40, None);
        send(&s, 9, None); // unknown peer leaves
        let (r, _w) = nix::unistd::pipe().unwrap();
        send(&s, 9, Some(r.as_fd()));
        let p = efds(1);
        send(&s, 8, Some(efd_of(&p[0])));
        send_raw(s.as_fd(), &[1, 2, 3], None).unwrap();
        rx.recv().unwrap();
    });
    let (mut conn, _hs) = connect(&f.path, 1, T).unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + T;
    tx.send(()).unwrap();
    while !conn.is_gone() && Instant::now() < deadline {
        events.extend(conn.read_events());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(
        events[0],
        PeerEvent::PeerJoined {
            id: 8,
            vector: 0,
            ..
        }
    ));
    assert!(matches!(events[1], PeerEvent::ServerGone));
    assert!(conn.read_events().is_empty(), "ServerGone is reported once");
}
