// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivvmm client` against a real `ivvmm server`: ring/wait, ping/pong,
//! following joins and leaves, dump, errors, and QEMU as a fellow peer.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::missing;

const T: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_ivvmm");

fn tmp_sock() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ivvmm-ct-{}-{n}.sock", std::process::id()))
}

/// A child process whose stdout lines arrive on a channel (stderr is kept
/// for failure messages).
struct Proc {
    child: Option<Child>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ivvmm");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            // Drained so a chatty child never blocks; echoed for diagnosis.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[child] {line}");
            }
        });
        Proc {
            child: Some(child),
            lines,
        }
    }

    fn line(&self) -> String {
        self.lines.recv_timeout(T).expect("no output line in time")
    }

    /// Waits for a line containing `needle`, returning it.
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    fn signal(&self, sig: Signal) {
        let pid = self.child.as_ref().unwrap().id();
        kill(Pid::from_raw(pid as i32), sig).unwrap();
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + T;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first so a server removes its socket; SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `ivvmm server` on a fresh socket, ready when its socket exists.
fn server(args: &[&str]) -> (Proc, PathBuf) {
    let sock = tmp_sock();
    let mut all = vec!["server", "-S", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    let p = Proc::spawn(&all);
    let deadline = Instant::now() + T;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (p, sock)
}

fn client(sock: &Path, args: &[&str]) -> Proc {
    let mut all = vec!["client", "-S", sock.to_str().unwrap()];
    all.extend_from_slice(args);
    Proc::spawn(&all)
}

fn client_output(sock: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["client", "-S", sock.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

/// The id from a summary line `id=N vectors=...`.
fn id_of(summary: &str) -> u16 {
    let field = summary.split_whitespace().next().unwrap();
    field.strip_prefix("id=").unwrap().parse().unwrap()
}

#[test]
fn ring_wakes_exactly_the_waiting_vector() {
    let (_srv, sock) = server(&["-n", "2"]);
    let mut waiter = client(&sock, &["wait", "1", "--timeout", "20s"]);
    let id = id_of(&waiter.line());
    // Ringing vector 0 must not wake a waiter on vector 1.
    let out = client_output(&sock, &["ring", &id.to_string(), "0"]);
    assert!(out.status.success(), "{out:?}");
    let out = client_output(&sock, &["ring", &id.to_string(), "1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("rang peer={id} vector=1")));
    assert_eq!(waiter.line(), "vector 1 fired count=1");
    assert!(waiter.wait().success());
}

#[test]
fn wait_times_out_with_a_clear_error() {
    let (_srv, sock) = server(&[]);
    let start = Instant::now();
    let out = client_output(&sock, &["wait", "0", "--timeout", "200ms"]);
    assert!(!out.status.success());
    assert!(start.elapsed() < T);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no interrupt on vector 0 within"), "{err}");
}

#[test]
fn ring_refuses_unknown_peers_and_vectors() {
    let (_srv, sock) = server(&["-n", "2"]);
    // Wait until the other peer has joined, and ring it by its real id.
    let other = client(&sock, &[]);
    let other_id = id_of(&other.line()).to_string();
    let err = client_output(&sock, &["ring", "77", "0"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("peer 77 is not connected"));
    let err = client_output(&sock, &["ring", &other_id, "2"]);
    assert!(String::from_utf8_lossy(&err.stderr).contains("vector 2 does not exist"));
}

fn micros(summary: &str, key: &str) -> f64 {
    let field = summary
        .split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {summary}"));
    field.trim_end_matches("us").parse().unwrap()
}

#[test]
fn ping_pong_between_two_clients_reports_percentiles() {
    let (_srv, sock) = server(&["-n", "2"]);
    let mut pong = client(&sock, &["pong", "--vector", "1"]);
    let pong_id = id_of(&pong.line());
    pong.line_with("ready");
    // Without --peer: found through the rendezvous (docs/pingpong.md).
    let out = client_output(&sock, &["ping", "--count", "300", "--vector", "1"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().nth(1).expect("a ping line");
    assert!(
        summary.starts_with(&format!("ping peer={pong_id} vector=1 count=300 ")),
        "{summary}"
    );
    let p = ["p50", "p90", "p99", "max"].map(|k| micros(summary, k));
    assert!(
        p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
        "{summary}"
    );
    // With --peer and spinning.
    let peer = pong_id.to_string();
    let out = client_output(
        &sock,
        &[
            "ping", "--peer", &peer, "--count", "100", "--vector", "1", "--spin",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // The pong served one pinger after the other, then stopped on SIGINT.
    let me = |l: String| l.split_whitespace().nth(1).map(str::to_string);
    let first = pong.line();
    assert!(first.ends_with("done answered=300"), "{first}");
    let second = pong.line();
    assert!(second.ends_with("done answered=400"), "{second}");
    assert_ne!(me(first), None);
    pong.signal(Signal::SIGINT);
    assert_eq!(pong.line(), "pong answered=400");
    assert!(pong.wait().success());
}

#[test]
fn ping_without_a_pong_says_how_to_start_one() {
    let (_srv, sock) = server(&[]);
    let out = client_output(&sock, &["ping", "--count", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no pong answered in shared memory"), "{err}");
    assert!(err.contains("ivvmm client pong"), "{err}");
    // A pong that pairs but answers only vector 0 never answers vector 1.
    let (_srv, sock) = server(&["-n", "2"]);
    let pong = client(&sock, &["pong", "--vector", "0"]);
    let id = id_of(&pong.line()).to_string();
    pong.line_with("ready");
    let out = client_output(
        &sock,
        &[
            "ping",
            "--count",
            "1",
            "--vector",
            "1",
            "--timeout",
            "300ms",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no answer from peer {id}")), "{err}");
}

#[test]
fn follow_prints_joins_and_leaves_until_interrupted() {
    let (_srv, sock) = server(&[]);
    let mut watcher = client(&sock, &[]);
    assert_eq!(id_of(&watcher.line()), 0);
    let out = client_output(&sock, &["dump", "--len", "16"]);
    assert!(out.status.success());
    assert_eq!(watcher.line(), "joined id=1");
    assert_eq!(watcher.line(), "left id=1");
    watcher.signal(Signal::SIGINT);
    assert!(watcher.wait().success());
}

#[test]
fn follow_ends_when_the_server_goes() {
    let (mut srv, sock) = server(&[]);
    let mut watcher = client(&sock, &[]);
    watcher.line();
    srv.signal(Signal::SIGTERM);
    assert_eq!(watcher.line(), "server gone");
    assert!(watcher.wait().success());
    assert!(srv.wait().success());
}

#[test]
fn dump_shows_the_pong_record_and_refuses_out_of_range() {
    let (_srv, sock) = server(&["-l", "64K"]);
    let pong = client(&sock, &["pong"]);
    let id = id_of(&pong.line());
    pong.line_with("ready");
    let out = client_output(&sock, &["dump", "--len", "8"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1).unwrap();
    assert!(line.starts_with("00000000  50 4f 4e 47"), "{line}");
    assert!(line.contains(&format!("{:02x} 00 00 00", id)), "{line}");
    assert!(line.ends_with("|PONG....|"), "{line}");
    let out = client_output(&sock, &["dump", "--offset", "64K", "--len", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the shared memory"));
}

#[test]
fn missing_server_is_a_clear_error() {
    let out = client_output(&tmp_sock(), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no ivshmem server socket"), "{err}");
}

#[test]
fn qemu_joins_our_server_as_a_peer() {
    let qemu = "qemu-system-x86_64";
    if Command::new(qemu).arg("--version").output().is_err() {
        missing(&format!("{qemu} not found: QEMU interop NOT tested"));
        return;
    }
    let (_srv, sock) = server(&["-n", "2", "-l", "1M"]);
    let watcher = client(&sock, &[]);
    watcher.line();
    let chardev = format!("socket,path={},id=c", sock.display());
    let mut vm = Command::new(qemu)
        .args(["-accel", "tcg", "-S", "-display", "none", "-nodefaults"])
        .args(["-monitor", "none", "-serial", "none"])
        .args(["-device", "ivshmem-doorbell,chardev=c,vectors=2"])
        .args(["-chardev", &chardev])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let joined = watcher.line();
    assert_eq!(joined, "joined id=1", "QEMU is peer 1");
    // QEMU accepted the greeting (it exits on a bad one) and can be rung.
    std::thread::sleep(Duration::from_millis(300));
    assert!(vm.try_wait().unwrap().is_none(), "QEMU exited");
    let out = client_output(&sock, &["ring", "1", "1"]);
    assert!(out.status.success(), "{out:?}");
    let _ = watcher.line(); // the ring client's own join/leave
    let _ = watcher.line();
    vm.kill().unwrap();
    vm.wait().unwrap();
    assert_eq!(watcher.line(), "left id=1");
}
