// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm server` over real sockets: the greeting byte by byte, join/leave
//! notices, ids, sizes, files and signals, and peers that misbehave.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use ivvmm::protocol::codec::{check_eventfd, Message, MessageReader, Received};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vmm_sys_util::eventfd::EventFd;

const T: Duration = Duration::from_secs(10);

fn unique(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("ivvmm-st-{tag}-{}-{n}", std::process::id())
}

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(unique(tag))
}

/// A running `ivvmm server`, stopped with SIGTERM on drop. Its stderr is
/// drained by a thread (a full pipe would stall the server) into `log`.
struct ServerProc {
    child: Option<Child>,
    sock: PathBuf,
    log: Arc<Mutex<String>>,
}

impl ServerProc {
    fn start(args: &[&str]) -> Self {
        let sock = tmp("sock");
        Self::start_at(&sock, args)
    }

    fn start_at(sock: &Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ivvmm"))
            .arg("server")
            .arg("-S")
            .arg(sock)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ivvmm server");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serving") {
                    let _ = ready_tx.send(());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let s = ServerProc {
            child: Some(child),
            sock: sock.to_path_buf(),
            log,
        };
        if ready_rx.recv_timeout(T).is_err() {
            panic!("server did not start: {}", s.log());
        }
        s
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().unwrap().id() as i32)
    }

    /// Sends `sig` and returns the exit output (bounded by T).
    fn stop(&mut self, sig: Signal) -> Output {
        kill(self.pid(), sig).unwrap();
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + T;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "server ignored {sig}");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait_with_output().unwrap()
    }

    fn connect(&self) -> Peer {
        Peer::connect(&self.sock)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

/// Runs the server expecting it to fail; returns its stderr.
fn server_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ivvmm"))
        .arg("server")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "server should have refused {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A raw protocol client.
struct Peer {
    sock: UnixStream,
    reader: MessageReader,
}

impl Peer {
    fn connect(path: &Path) -> Self {
        let sock = UnixStream::connect(path).expect("connect");
        sock.set_nonblocking(true).unwrap();
        Peer {
            sock,
            reader: MessageReader::new(),
        }
    }

    /// The next message, or `None` on EOF; panics after T.
    fn next(&mut self) -> Option<Message> {
        self.next_within(T).expect("no message within the timeout")
    }

    fn next_within(&mut self, wait: Duration) -> Result<Option<Message>, ()> {
        let deadline = Instant::now() + wait;
        loop {
            let received = match self.reader.read(self.sock.as_fd()) {
                Ok(r) => r,
                // The server closed us with unread data of ours: a reset.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => panic!("read: {e}"),
            };
            match received {
                Received::Message(m) => return Ok(Some(m)),
                Received::Eof { .. } => return Ok(None),
                Received::WouldBlock => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(());
                    }
                    let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                    let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(ms));
                }
            }
        }
    }

    fn expect(&mut self, value: i64, with_fd: bool) -> Option<OwnedFd> {
        let m = self.next().expect("server closed the connection");
        assert_eq!(m.value, value, "message value");
        assert_eq!(m.fd.is_some(), with_fd, "fd presence for message {value}");
        m.fd
    }

    fn expect_eventfd(&mut self, value: i64) -> EventFd {
        let fd = self.expect(value, true).unwrap();
        assert_eq!(check_eventfd(fd.as_fd()), Ok(()), "not an eventfd");
        // SAFETY: a freshly received eventfd that we own.
        unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
    }

    /// Reads version, id, shm; returns (id, shm fd).
    fn greeting(&mut self) -> (i64, OwnedFd) {
        self.expect(0, false);
        let m = self.next().unwrap();
        assert!(m.fd.is_none(), "fd with the id");
        assert!((0..=65535).contains(&m.value), "id {}", m.value);
        let shm = self.expect(-1, true).unwrap();
        (m.value, shm)
    }

    /// Full handshake with `n` vectors and the given existing peers.
    fn join(&mut self, n: usize, existing: &[i64]) -> i64 {
        let (id, _) = self.greeting();
        for &p in existing {
            for _ in 0..n {
                self.expect_eventfd(p);
            }
        }
        for _ in 0..n {
            self.expect_eventfd(id);
        }
        id
    }

    fn quiet(&mut self) -> bool {
        self.next_within(Duration::from_millis(100)).is_err()
    }
}

fn fd_link(fd: &OwnedFd) -> String {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn fd_size(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd).unwrap().st_size as u64
}

fn pending(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

#[test]
fn greeting_order_contents_and_wiring() {
    let server = ServerProc::start(&["-n", "2", "-l", "1M"]);
    let mut a = server.connect();
    let (a_id, a_shm) = a.greeting();
    assert_eq!(a_id, 0, "the first peer gets id 0");
    assert!(
        fd_link(&a_shm).starts_with("/memfd:"),
        "{}",
        fd_link(&a_shm)
    );
    assert_eq!(fd_size(&a_shm), 1 << 20);
    let a_own = [a.expect_eventfd(0), a.expect_eventfd(0)];
    assert!(a.quiet(), "nothing more for a lone peer");

    let mut b = server.connect();
    let (b_id, b_shm) = b.greeting();
    assert_eq!(b_id, 1);
    let b_to_a = [b.expect_eventfd(0), b.expect_eventfd(0)];
    let b_own = [b.expect_eventfd(1), b.expect_eventfd(1)];
    assert!(b.quiet());
    let a_to_b = [a.expect_eventfd(1), a.expect_eventfd(1)];
    assert!(a.quiet());

    // Same memory on both sides.
    let sa = nix::sys::stat::fstat(&a_shm).unwrap();
    let sb = nix::sys::stat::fstat(&b_shm).unwrap();
    assert_eq!((sa.st_dev, sa.st_ino), (sb.st_dev, sb.st_ino));

    // B rings A's vector 1: only A's vector 1 fires.
    b_to_a[1].write(1).unwrap();
    assert_eq!(pending(&a_own[1]), 1);
    assert_eq!(pending(&a_own[0]), 0);
    // A rings B's vector 0.
    a_to_b[0].write(1).unwrap();
    assert_eq!(pending(&b_own[0]), 1);
    assert_eq!(pending(&b_own[1]), 0);

    drop(b);
    a.expect(1, false);
    assert!(a.quiet());
}

#[test]
fn ids_are_round_robin_and_not_reused_quickly() {
    let server = ServerProc::start(&[]);
    let mut a = server.connect();
    assert_eq!(a.join(1, &[]), 0);
    let mut b = server.connect();
    assert_eq!(b.join(1, &[0]), 1);
    a.expect_eventfd(1);
    let mut c = server.connect();
    assert_eq!(c.join(1, &[0, 1]), 2);
    a.expect_eventfd(2);
    drop(b);
    a.expect(1, false);
    let mut d = server.connect();
    assert_eq!(d.join(1, &[0, 2]), 3, "id 1 just left: not reused");
    drop((a, c, d));
    let mut e = server.connect();
    assert_eq!(e.greeting().0, 4);
}

#[test]
fn eight_gib_works_six_gib_is_refused() {
    let server = ServerProc::start(&["-l", "8G"]);
    let mut a = server.connect();
    let (_, shm) = a.greeting();
    assert_eq!(fd_size(&shm), 8 << 30);
    let err = server_fails(&["-S", &tmp("x").to_string_lossy(), "-l", "6G"]);
    assert!(err.contains("not a power of two"), "{err}");
    assert!(err.contains("8G"), "the error names the fix: {err}");
}

#[test]
fn socket_is_0600_and_a_stale_one_is_replaced() {
    let sock = tmp("stale");
    drop(UnixListener::bind(&sock).unwrap()); // leaves a dead socket behind
    let server = ServerProc::start_at(&sock, &[]);
    let m = fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600);
    server.connect().join(1, &[]);
}

#[test]
fn a_live_socket_or_a_non_socket_is_refused() {
    let server = ServerProc::start(&[]);
    let err = server_fails(&["-S", &server.sock.to_string_lossy()]);
    assert!(err.contains("another ivshmem server is listening"), "{err}");
    server.connect().join(1, &[]);

    let file = tmp("file");
    fs::write(&file, b"keep me").unwrap();
    let err = server_fails(&["-S", &file.to_string_lossy()]);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    fs::remove_file(&file).unwrap();
}

#[test]
fn sigterm_and_sigint_remove_socket_and_pidfile() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let pidfile = tmp("pid");
        let mut server = ServerProc::start(&["-p", &pidfile.to_string_lossy()]);
        let deadline = Instant::now() + T;
        while !pidfile.exists() {
            assert!(Instant::now() < deadline, "no pidfile");
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = fs::read_to_string(&pidfile).unwrap();
        assert_eq!(text.trim(), server.pid().to_string());
        assert_eq!(fs::metadata(&pidfile).unwrap().mode() & 0o777, 0o600);
        let mut peer = server.connect();
        peer.join(1, &[]);
        let out = server.stop(sig);
        assert!(out.status.success(), "{sig}: {out:?}");
        assert!(!server.sock.exists(), "{sig}: socket left behind");
        assert!(!pidfile.exists(), "{sig}: pidfile left behind");
        assert!(peer.next().is_none(), "peers see the server go");
    }
}

#[test]
fn a_peer_that_never_reads_stalls_nobody_and_is_dropped_when_over_its_bound() {
    let server = ServerProc::start(&[]);
    let mut first = server.connect();
    first.join(1, &[]);
    let mut stalled = server.connect(); // never reads from here on
    let mut seen = 0;
    let mut drain = |first: &mut Peer, wait: Duration| {
        while let Ok(Some(_)) = first.next_within(wait) {
            seen += 1;
        }
    };
    let start = Instant::now();
    for _ in 0..50 {
        let mut p = server.connect();
        p.greeting();
        drain(&mut first, Duration::ZERO);
    }
    assert!(start.elapsed() < T, "50 joins took {:?}", start.elapsed());
    // Far more notices than any bound: the server must drop the non-reader.
    for _ in 0..1500 {
        let mut p = server.connect();
        p.greeting();
        drain(&mut first, Duration::ZERO);
    }
    drain(&mut first, Duration::from_millis(500));
    // The reading peer saw every join and leave (the stalled peer's too).
    assert_eq!(seen, 2 * 1551, "notices seen by the reading peer");
    let mut last = server.connect();
    let id = last.greeting().0;
    assert!(id > 1500);
    // The stalled peer gets what was queued, then EOF: it was dropped.
    let deadline = Instant::now() + T;
    loop {
        assert!(Instant::now() < deadline, "stalled peer was never dropped");
        match stalled.next_within(T) {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(()) => panic!("stalled peer neither served nor dropped"),
        }
    }
    assert!(server.log().contains("stopped reading"), "{}", server.log());
}

#[test]
fn a_peer_that_sends_garbage_is_dropped_and_others_are_told() {
    let server = ServerProc::start(&[]);
    let mut a = server.connect();
    a.join(1, &[]);
    let mut x = server.connect();
    let x_id = x.join(1, &[0]);
    a.expect_eventfd(x_id);
    (&x.sock).write_all(b"garbage!garbage!").unwrap();
    assert!(
        std::iter::from_fn(|| x.next()).count() == 0,
        "the talker is dropped"
    );
    a.expect(x_id, false);
    let mut b = server.connect();
    b.join(1, &[0]);
}

#[test]
fn posix_shm_created_by_the_server_is_removed_on_exit_unless_kept() {
    let name = unique("shm");
    let path = Path::new("/dev/shm").join(&name);
    let mut server = ServerProc::start(&["-M", &name, "-l", "64K"]);
    let m = fs::metadata(&path).unwrap();
    assert_eq!((m.len(), m.mode() & 0o777), (64 << 10, 0o600));
    let (_, fd) = server.connect().greeting();
    assert_eq!(fd_link(&fd), path.to_string_lossy());
    assert!(server.stop(Signal::SIGTERM).status.success());
    assert!(!path.exists(), "created object removed at exit");

    let mut server = ServerProc::start(&["-M", &name, "-l", "64K", "--keep-shm"]);
    server.stop(Signal::SIGTERM);
    assert!(path.exists(), "--keep-shm keeps it");
    // It existed before now: used as is and never removed.
    fs::write(&path, vec![7u8; 64 << 10]).unwrap();
    let mut server = ServerProc::start(&["-M", &name, "-l", "64K"]);
    let mut peer = server.connect();
    let (_, fd) = peer.greeting();
    let mut byte = [0u8; 1];
    fs::File::from(fd).read_exact(&mut byte).unwrap();
    assert_eq!(byte[0], 7, "contents kept");
    server.stop(Signal::SIGTERM);
    assert_eq!(fs::metadata(&path).unwrap().len(), 64 << 10);
    // A pre-existing object of another size is refused and left as it was.
    let err = server_fails(&["-S", &tmp("s").to_string_lossy(), "-M", &name, "-l", "128K"]);
    assert!(
        err.contains("64K") && err.contains("left unchanged"),
        "{err}"
    );
    let err = server_fails(&["-S", &tmp("s").to_string_lossy(), "-M", &name, "-l", "32K"]);
    assert!(err.contains("-l 64K"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), vec![7u8; 64 << 10]);
    fs::remove_file(&path).unwrap();
    // Created, then start-up failed (no such socket directory): removed again.
    let err = server_fails(&["-S", "/nonexistent/dir/s.sock", "-M", &name, "-l", "64K"]);
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!path.exists(), "a failed start leaves no shm object behind");
}

#[test]
fn shm_dir_gives_an_unlinked_file() {
    let dir = tmp("dir");
    fs::create_dir(&dir).unwrap();
    let server = ServerProc::start(&["-m", &dir.to_string_lossy(), "-l", "64K"]);
    let (_, fd) = server.connect().greeting();
    assert_eq!(fd_size(&fd), 64 << 10);
    assert!(fd_link(&fd).ends_with("(deleted)"), "{}", fd_link(&fd));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    drop(server);
    fs::remove_dir(&dir).unwrap();
}

#[test]
fn daemon_mode_returns_once_listening_and_cleans_up_on_sigterm() {
    let sock = tmp("daemon");
    let pidfile = tmp("daemon-pid");
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ivvmm"))
        .args(["server", "-D", "-S"])
        .arg(&sock)
        .arg("-p")
        .arg(&pidfile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(start.elapsed() < T);
    // Ready when the parent returns: socket and pidfile are there.
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    Peer::connect(&sock).join(1, &[]);
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + T;
    while sock.exists() || pidfile.exists() {
        assert!(Instant::now() < deadline, "daemon left its files behind");
        std::thread::sleep(Duration::from_millis(10));
    }
}
