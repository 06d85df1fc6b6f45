// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `--server` handshake failures, each against a fake server that misbehaves
//! in one way: one clear line, exit status 1, never a hang or a busy loop.

mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use ivvmm::protocol::codec::send_message;

/// What the fake server sends after accepting one connection.
#[derive(Clone)]
enum Msg {
    Value(i64),
    WithFd(i64, u64), // value, memfd of this size
    WithEventfd(i64),
    Close,
    Hang,
}

fn memfd(size: u64) -> OwnedFd {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"fake-ivshmem".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a valid fd we own; no memory is involved.
    let rc = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size as i64) };
    assert_eq!(rc, 0);
    fd
}

fn fake_server(script: Vec<Msg>) -> (PathBuf, JoinHandle<()>) {
    let path = std::env::temp_dir().join(unique("fake-ivshmem.sock"));
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        for m in script {
            match m {
                Msg::Value(v) => send_message(sock.as_fd(), v, None).unwrap(),
                Msg::WithFd(v, size) => {
                    let fd = memfd(size);
                    send_message(sock.as_fd(), v, Some(fd.as_fd())).unwrap();
                }
                Msg::WithEventfd(v) => {
                    let evt = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
                    // SAFETY: `evt` outlives this borrow of its fd.
                    let fd = unsafe {
                        std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&evt))
                    };
                    send_message(sock.as_fd(), v, Some(fd)).unwrap();
                }
                Msg::Close => return,
                Msg::Hang => std::thread::sleep(Duration::from_secs(12)),
            }
        }
        // Keep the connection open until the client gives up.
        std::thread::sleep(Duration::from_secs(12));
    });
    (path, handle)
}

fn vm_against(path: &std::path::Path, extra: &[&str]) -> Outcome {
    let args = hello_against_server(path, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ivvmm(&args, Duration::from_secs(20))
}

fn one_line(out: &Outcome, needle: &str) {
    assert_eq!(out.code(), 1, "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(lines[0].contains(needle), "want '{needle}': {out:?}");
}

#[test]
fn no_socket() {
    if !require_kvm() {
        return;
    }
    let out = vm_against(&PathBuf::from("/nonexistent/ivshmem.sock"), &[]);
    one_line(
        &out,
        "no ivshmem server socket at /nonexistent/ivshmem.sock",
    );
}

#[test]
fn stale_socket_nobody_listening() {
    if !require_kvm() {
        return;
    }
    let path = std::env::temp_dir().join(unique("stale.sock"));
    drop(UnixListener::bind(&path).unwrap());
    let out = vm_against(&path, &[]);
    one_line(&out, "connection refused");
    let _ = std::fs::remove_file(path);
}

#[test]
fn silent_server_times_out() {
    if !require_kvm() {
        return;
    }
    let (path, _h) = fake_server(vec![Msg::Hang]);
    let out = vm_against(&path, &[]);
    one_line(&out, "did not complete the handshake");
    assert!(out.elapsed < Duration::from_secs(10), "bounded: {out:?}");
    let _ = std::fs::remove_file(path);
}

#[test]
fn server_closes_mid_handshake() {
    if !require_kvm() {
        return;
    }
    let (path, _h) = fake_server(vec![Msg::Value(0), Msg::Close]);
    let out = vm_against(&path, &[]);
    one_line(&out, "closed the connection");
    let _ = std::fs::remove_file(path);
}

#[test]
fn wrong_protocol_version() {
    if !require_kvm() {
        return;
    }
    let (path, _h) = fake_server(vec![Msg::Value(1)]);
    let out = vm_against(&path, &[]);
    one_line(&out, "version 1");
    let _ = std::fs::remove_file(path);
}

#[test]
fn malformed_messages() {
    if !require_kvm() {
        return;
    }
    for script in [
        vec![Msg::Value(0), Msg::Value(70_000)], // id out of range
        vec![Msg::Value(0), Msg::Value(-5)],     // negative id
        vec![Msg::WithFd(0, 4096)],              // fd with the version
        vec![Msg::Value(0), Msg::Value(1), Msg::Value(-1)], // shm message without fd
    ] {
        let (path, _h) = fake_server(script);
        let out = vm_against(&path, &[]);
        assert_eq!(out.code(), 1, "{out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        assert!(out.stderr.contains(path.to_str().unwrap()), "{out:?}");
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn shm_smaller_than_the_bar() {
    if !require_kvm() {
        return;
    }
    let (path, _h) = fake_server(vec![
        Msg::Value(0),
        Msg::Value(3),
        Msg::WithFd(-1, 1 << 20),
        Msg::WithEventfd(3),
    ]);
    let out = vm_against(&path, &["--size", "4M"]);
    one_line(&out, "shared memory is 1M but this device's BAR is 4M");
    let _ = std::fs::remove_file(path);
}

/// A server whose memory is not a power of two (QEMU's device aborts):
/// BAR2 is rounded up, the guest boots and sees the right position.
#[test]
fn odd_sized_server_memory_gets_a_rounded_bar() {
    if !require_kvm() {
        return;
    }
    // Version, id 5, 6 MiB of memory, one own vector.
    let (path, _h) = fake_server(vec![
        Msg::Value(0),
        Msg::Value(5),
        Msg::WithFd(-1, 6 << 20),
        Msg::WithEventfd(5),
    ]);
    let k = testguest(false);
    let out = run_ivvmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--cmdline",
            "test=ivshmem-ids",
            "--server",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert!(out.passed(), "{out:?}");
    let l = lines_with(&out, "ivshmem 00:")[0].to_string();
    assert!(
        field_of(&l, "bar2")
            .unwrap()
            .starts_with("mem64,pref,size=0x800000,"),
        "{l}"
    );
    let _ = std::fs::remove_file(path);
}
