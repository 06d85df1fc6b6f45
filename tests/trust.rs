// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Trust only what is ours, end to end through the binary: existing shared
//! memory of another user or writable by everyone is refused (unless shared
//! on purpose), an empty object of ours is grown, paths are never followed
//! through symlinks, servers and peers of other users are refused, fds a
//! server sends must be what they claim, and every fd we hold is
//! close-on-exec.
//!
//! Several tests need root (to give files to `nobody`, or to run a process
//! as `nobody` with setpriv); they say SKIPPED otherwise. CI runs as root.

mod common;

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ivvmm::protocol::codec::send_message;
use ivvmm::shm::ShmBackend;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn need_root(what: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED: needs root to {what}");
    }
    is_root()
}

fn chown(path: &Path, uid: u32, gid: Option<u32>) {
    std::os::unix::fs::lchown(path, Some(uid), gid).unwrap();
}

/// Owner, group, mode, size, inode, mtime and a content hash: "exactly as
/// it was".
fn fingerprint(path: &Path) -> (u32, u32, u32, u64, u64, i64, u64) {
    let m = fs::symlink_metadata(path).unwrap();
    let data = fs::read(path).unwrap_or_default();
    (
        m.uid(),
        m.gid(),
        m.mode(),
        m.len(),
        m.ino(),
        m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        fnv1a(&data),
    )
}

fn one_error_line(out: &Outcome, needles: &[&str]) {
    assert_ne!(out.code(), 0, "{out:?}");
    let lines: Vec<_> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {out:?}");
    for needle in needles {
        assert!(lines[0].contains(needle), "want '{needle}': {out:?}");
    }
    assert!(!out.stderr.contains("panicked"), "{out:?}");
}

fn hello(extra: &[&str]) -> Outcome {
    boot_test("hello", extra)
}

/// A scratch directory, removed with everything in it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(tag));
        fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---- shared memory that is not ours ----

#[test]
fn another_users_object_is_refused_naming_owner_and_mode_and_left_unchanged() {
    if !require_kvm() || !need_root("give an object to nobody") {
        return;
    }
    let shm = ShmGuard::new("ivt-foreign");
    fs::write(shm.path(), vec![9u8; 1 << 20]).unwrap();
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o600)).unwrap();
    chown(&shm.path(), NOBODY, None);
    let before = fingerprint(&shm.path());
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    one_error_line(
        &out,
        &[
            "uid 65534 (nobody)",
            "mode 0600",
            "not to us",
            "--shm-shared",
        ],
    );
    assert_eq!(out.code(), 1, "{out:?}");
    assert_eq!(
        fingerprint(&shm.path()),
        before,
        "a refusal changes nothing"
    );

    // The same through --ivshmem and --shm-path.
    let spec = format!("shm={},size=1M", shm.0);
    one_error_line(&hello(&["--ivshmem", &spec]), &["uid 65534"]);
    let path = shm.path().to_str().unwrap().to_string();
    one_error_line(
        &hello(&["--shm-path", &path, "--size", "1M"]),
        &["uid 65534"],
    );
    assert_eq!(fingerprint(&shm.path()), before);
}

#[test]
fn an_object_shared_on_purpose_is_used_as_it_is() {
    if !require_kvm() || !need_root("give an object to nobody") {
        return;
    }
    let shm = ShmGuard::new("ivt-shared");
    fs::write(shm.path(), vec![0u8; 1 << 20]).unwrap();
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o666)).unwrap();
    chown(&shm.path(), NOBODY, Some(NOBODY));
    let out = hello(&["--shm", &shm.0, "--size", "1M", "--shm-shared"]);
    assert!(out.passed(), "{out:?}");
    let spec = format!("shm={},size=1M,shared=on", shm.0);
    let out = hello(&["--ivshmem", &spec]);
    assert!(out.passed(), "{out:?}");
    let m = fs::metadata(shm.path()).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777, m.len()),
        (NOBODY, 0o666, 1 << 20)
    );
}

#[test]
fn a_world_writable_object_is_refused_but_group_access_is_kept() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-ww");
    fs::write(shm.path(), vec![1u8; 1 << 20]).unwrap();
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o666)).unwrap();
    let before = fingerprint(&shm.path());
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    one_error_line(
        &out,
        &["writable by every user", "mode 0666", "--shm-shared"],
    );
    assert_eq!(fingerprint(&shm.path()), before);
    // Looking Glass's 0660: the owner's choice, used.
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o660)).unwrap();
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    assert_eq!(fs::metadata(shm.path()).unwrap().mode() & 0o777, 0o660);
}

#[test]
fn an_empty_object_is_grown_keeping_owner_group_and_mode() {
    if !require_kvm() {
        return;
    }
    // What systemd-tmpfiles makes of `f /dev/shm/looking-glass 0660 user kvm -`.
    let shm = ShmGuard::new("ivt-empty");
    fs::File::create(shm.path()).unwrap();
    fs::set_permissions(shm.path(), fs::Permissions::from_mode(0o660)).unwrap();
    if is_root() {
        chown(&shm.path(), 0, Some(NOBODY));
    }
    let before = fs::metadata(shm.path()).unwrap();
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    let after = fs::metadata(shm.path()).unwrap();
    assert_eq!(after.len(), 1 << 20, "grown to --size");
    assert_eq!(after.ino(), before.ino(), "the same object");
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode()),
        "owner, group and mode kept"
    );
    // Bigger now: used as is, never shrunk to a smaller --size.
    let out = hello(&["--shm", &shm.0, "--size", "64K"]);
    assert!(out.passed(), "{out:?}");
    assert_eq!(fs::metadata(shm.path()).unwrap().len(), 1 << 20);
}

#[test]
fn a_smaller_object_with_data_is_refused_unchanged() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-small");
    fs::write(shm.path(), vec![5u8; 4096]).unwrap();
    let before = fingerprint(&shm.path());
    let out = hello(&["--shm", &shm.0, "--size", "1M"]);
    one_error_line(&out, &["is 4K but 1M was requested"]);
    assert_eq!(fingerprint(&shm.path()), before);
}

#[test]
fn a_symlinked_shm_path_is_never_followed() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("ivt-link");
    let target = dir.join("target");
    fs::write(&target, vec![3u8; 1 << 20]).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let before = fingerprint(&target);
    let out = hello(&["--shm-path", link.to_str().unwrap(), "--size", "1M"]);
    one_error_line(&out, &["symbolic link", "never followed"]);
    assert_eq!(fingerprint(&target), before);
    // Dangling: nothing is created where it points.
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let out = hello(&["--shm-path", dangling.to_str().unwrap(), "--size", "1M"]);
    one_error_line(&out, &["symbolic link"]);
    assert!(!dir.join("nowhere").exists());
}

#[test]
fn a_shm_path_in_a_directory_others_may_write_is_refused_unless_sticky() {
    if !require_kvm() {
        return;
    }
    let dir = TempDir::new("ivt-open");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("shm");
    let out = hello(&["--shm-path", path.to_str().unwrap(), "--size", "1M"]);
    one_error_line(&out, &["writable by every user and not sticky", "chmod +t"]);
    assert!(!path.exists(), "nothing created");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o1777)).unwrap();
    let out = hello(&["--shm-path", path.to_str().unwrap(), "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
}

#[test]
fn the_server_refuses_a_foreign_object_unless_shm_shared_and_grows_an_empty_one() {
    if !need_root("give an object to nobody") {
        return;
    }
    let shm = ShmGuard::new("ivt-srv");
    fs::write(shm.path(), vec![0u8; 1 << 20]).unwrap();
    chown(&shm.path(), NOBODY, None);
    let before = fingerprint(&shm.path());
    let sock = std::env::temp_dir().join(unique("ivt-srv.sock"));
    let s = sock.to_str().unwrap();
    let out = run_ivvmm(
        &["server", "-S", s, "-M", &shm.0, "-l", "1M"],
        Duration::from_secs(10),
    );
    one_error_line(&out, &["uid 65534", "--shm-shared"]);
    assert_eq!(fingerprint(&shm.path()), before);
    assert!(!sock.exists(), "nothing bound");

    let server = Server::start(&["-M", &shm.0, "-l", "1M", "--shm-shared"]);
    let out = server.stop();
    assert_eq!(out.code(), 0, "{out:?}");

    let empty = ShmGuard::new("ivt-srv-empty");
    fs::File::create(empty.path()).unwrap();
    let server = Server::start(&["-M", &empty.0, "-l", "1M"]);
    let out = server.stop();
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(fs::metadata(empty.path()).unwrap().len(), 1 << 20);
}

// ---- the server's own files ----

#[test]
fn the_pidfile_and_socket_are_never_created_through_a_symlink() {
    let dir = TempDir::new("ivt-files");
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let before = fingerprint(&victim);

    let pid_link = dir.join("pid");
    std::os::unix::fs::symlink(&victim, &pid_link).unwrap();
    let server = Server::start(&["-p", pid_link.to_str().unwrap()]);
    let pid = server.proc.as_ref().unwrap().child.id();
    let m = fs::symlink_metadata(&pid_link).unwrap();
    assert!(
        m.file_type().is_file(),
        "the symlink was replaced, not followed"
    );
    assert_eq!(
        fs::read_to_string(&pid_link).unwrap().trim(),
        pid.to_string()
    );
    assert_eq!(m.mode() & 0o777, 0o600);
    let out = server.stop();
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(!pid_link.exists(), "removed at exit");
    assert_eq!(fingerprint(&victim), before);

    let sock_link = dir.join("sock");
    std::os::unix::fs::symlink(&victim, &sock_link).unwrap();
    let out = run_ivvmm(
        &["server", "-S", sock_link.to_str().unwrap()],
        Duration::from_secs(10),
    );
    one_error_line(&out, &["is not a socket"]);
    assert_eq!(fingerprint(&victim), before);
}

// ---- servers and peers of other users ----

/// `ivvmm server` running as nobody, its socket in a directory nobody may
/// write; `chown_socket_to_root` then gives the socket file to root, so only
/// the SO_PEERCRED check can tell.
struct ForeignServer {
    dir: TempDir,
    proc: Option<Running>,
}

impl ForeignServer {
    fn start(chown_socket_to_root: bool) -> Option<ForeignServer> {
        if Command::new("setpriv").arg("--version").output().is_err() {
            eprintln!("SKIPPED: setpriv is missing (util-linux)");
            return None;
        }
        let dir = TempDir::new("ivt-fsrv");
        chown(&dir.0, NOBODY, Some(NOBODY));
        let sock = dir.join("s");
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", ivvmm()])
            .args(["server", "-S", sock.to_str().unwrap(), "-l", "1M"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv");
        let mut proc = Running::from_child(child);
        proc.wait_for("serving", Duration::from_secs(10));
        if chown_socket_to_root {
            chown(&sock, 0, Some(0));
        }
        Some(ForeignServer {
            dir,
            proc: Some(proc),
        })
    }

    fn path(&self) -> String {
        self.dir.join("s").to_str().unwrap().to_string()
    }
}

impl Drop for ForeignServer {
    fn drop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            let _ = p.finish(Duration::from_secs(10));
        }
    }
}

fn client(socket: &str, extra: &[&str]) -> Outcome {
    let mut args = vec!["client", "-S", socket, "--connect-timeout", "3s"];
    args.extend_from_slice(extra);
    args.push("dump");
    args.extend_from_slice(&["--len", "16"]);
    run_ivvmm(&args, Duration::from_secs(20))
}

#[test]
fn a_server_running_as_another_user_is_refused_unless_named() {
    if !need_root("run a server as nobody") {
        return;
    }
    // The process behind a root-owned socket runs as nobody: SO_PEERCRED.
    let Some(server) = ForeignServer::start(true) else {
        return;
    };
    let out = client(&server.path(), &[]);
    one_error_line(&out, &["runs as uid 65534 (nobody)", "--server-uid 65534"]);
    let out = client(&server.path(), &["--server-uid", "65534"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.starts_with("id="), "{out:?}");
    drop(server);

    // Its socket file belongs to nobody: refused before connecting.
    let Some(server) = ForeignServer::start(false) else {
        return;
    };
    let out = client(&server.path(), &[]);
    one_error_line(
        &out,
        &["socket", "belongs to uid 65534", "--server-uid 65534"],
    );
    let out = client(&server.path(), &["--server-uid", "nobody"]);
    assert_eq!(out.code(), 0, "{out:?}");

    // The VM's flags say the same.
    if !require_kvm() {
        return;
    }
    let out = hello(&["--server", &server.path()]);
    one_error_line(&out, &["uid 65534", "--server-uid 65534"]);
    let spec = format!("server={},server-uid=65534", server.path());
    let out = hello(&["--ivshmem", &spec]);
    assert!(out.passed(), "{out:?}");
}

fn client_as_nobody(socket: &str) -> Outcome {
    let child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", ivvmm()])
        .args(["client", "-S", socket, "--connect-timeout", "3s", "dump"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    wait_with_deadline(child, Duration::from_secs(20))
}

#[test]
fn the_server_refuses_peers_of_other_users_unless_named() {
    if !need_root("run a client as nobody") {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setpriv is missing (util-linux)");
        return;
    }
    let server = Server::start(&["-l", "1M", "-v"]);
    // Let nobody reach the socket: only the SO_PEERCRED check stops it.
    fs::set_permissions(&server.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = client_as_nobody(server.path());
    assert_ne!(out.code(), 0, "{out:?}");
    assert!(out.stderr.contains("closed the connection"), "{out:?}");
    let log = server.stop();
    assert!(
        log.stderr.contains("refusing a peer running as uid 65534")
            && log.stderr.contains("--peer-uid 65534"),
        "{log:?}"
    );
    assert!(!log.stderr.contains("joined"), "{log:?}");

    let server = Server::start(&["-l", "1M", "--peer-uid", "65534"]);
    fs::set_permissions(&server.socket, fs::Permissions::from_mode(0o666)).unwrap();
    let out = client_as_nobody(server.path());
    assert_eq!(out.code(), 0, "{out:?}");
    server.stop();
}

// ---- fds that are not what they claim ----

/// A fake server that greets every connection with `greet`, in a thread.
struct FakeServer {
    path: PathBuf,
}

impl FakeServer {
    fn start(greet: fn(&UnixStream)) -> FakeServer {
        let path = std::env::temp_dir().join(unique("ivt-fake.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                greet(&s);
                // Hold the connection until the other side closes it.
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = std::io::Read::read(&mut &s, &mut [0u8; 1]);
            }
        });
        FakeServer { path }
    }
    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn send(s: &UnixStream, value: i64, fd: Option<std::os::fd::BorrowedFd<'_>>) {
    send_message(s.as_fd(), value, fd).unwrap();
}

fn pipe_as_doorbell(s: &UnixStream) {
    let shm = ShmBackend::memfd(1 << 20, true).unwrap();
    let (r, _w) = nix::unistd::pipe().unwrap();
    send(s, 0, None);
    send(s, 0, None);
    send(s, -1, Some(shm.file().as_fd()));
    send(s, 0, Some(r.as_fd()));
}

fn socket_as_memory(s: &UnixStream) {
    let (a, _b) = UnixStream::pair().unwrap();
    send(s, 0, None);
    send(s, 0, None);
    send(s, -1, Some(a.as_fd()));
}

#[test]
fn a_pipe_sent_as_a_doorbell_ends_the_handshake() {
    let fake = FakeServer::start(pipe_as_doorbell);
    let out = client(fake.path(), &[]);
    one_error_line(&out, &["sent a pipe as a doorbell of peer 0", "an eventfd"]);
    if !require_kvm() {
        return;
    }
    let out = hello(&["--server", fake.path()]);
    one_error_line(&out, &["sent a pipe as a doorbell"]);
}

#[test]
fn a_socket_sent_as_the_memory_ends_the_handshake() {
    let fake = FakeServer::start(socket_as_memory);
    let out = client(fake.path(), &[]);
    one_error_line(&out, &["sent a socket as the shared memory", "memfd"]);
    if !require_kvm() {
        return;
    }
    let out = hello(&["--server", fake.path()]);
    one_error_line(&out, &["sent a socket as the shared memory"]);
}

fn unsealed_memfd(s: &UnixStream) {
    let shm = ShmBackend::memfd(1 << 20, false).unwrap();
    let own = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC).unwrap();
    // SAFETY: `own` outlives the borrow.
    let efd = unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(&own)) };
    send(s, 0, None);
    send(s, 0, None);
    send(s, -1, Some(shm.file().as_fd()));
    send(s, 0, Some(efd));
}

#[test]
fn an_unsealed_memfd_is_accepted_and_said_at_verbose() {
    if !require_kvm() {
        return;
    }
    let fake = FakeServer::start(unsealed_memfd);
    let out = hello(&["--server", fake.path(), "-v"]);
    assert!(out.passed(), "{out:?}");
    assert_eq!(
        out.stderr.matches("not sealed against shrinking").count(),
        1,
        "{out:?}"
    );
    let out = hello(&["--server", fake.path()]);
    assert!(out.passed(), "{out:?}");
    assert!(!out.stderr.contains("sealed"), "quiet without -v: {out:?}");
}

// ---- close-on-exec ----

/// Every fd of `pid` but 0, 1 and 2 has O_CLOEXEC (fdinfo's flags are octal).
fn assert_all_cloexec(what: &str, pid: u32) -> usize {
    let mut checked = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let fd: u32 = name.parse().unwrap();
        if fd <= 2 {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue; // closed meanwhile
        };
        let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or_else(|| panic!("{what}: no flags in fdinfo {fd}: {info}"));
        assert_ne!(
            flags & libc::O_CLOEXEC as u32,
            0,
            "{what}: fd {fd} ({}) is not close-on-exec",
            link.display()
        );
        checked += 1;
    }
    checked
}

/// Starts ivvmm with no fds but 0, 1 and 2: whatever the test harness or
/// its parents left open (and inheritable) must not count against ivvmm.
fn spawn_clean(args: &[&str]) -> Running {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(ivvmm());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only
    // makes one async-signal-safe syscall (close_range).
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    Running::from_child(cmd.spawn().expect("spawn ivvmm"))
}

#[test]
fn every_fd_of_a_vm_a_server_and_a_client_is_close_on_exec() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-cloexec");
    let socket = std::env::temp_dir().join(unique("ivt-cloexec.sock"));
    let sock = socket.to_str().unwrap();
    let mut server = spawn_clean(&["server", "-S", sock, "-l", "4M", "-n", "2", "-M", &shm.0]);
    server.wait_for("serving", Duration::from_secs(10));
    let kernel = testguest(false);
    let mut vm = spawn_clean(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=pingpong role=pong rounds=1000",
        "--server",
        sock,
        "--vectors",
        "2",
        "--cpus",
        "2",
    ]);
    vm.wait_for("pingpong role=pong id=", Duration::from_secs(30));
    let mut client = spawn_clean(&["client", "-S", sock]);
    client.wait_for("id=", Duration::from_secs(10));
    // KVM, the VM and vCPU fds, eventfds (ioeventfds, irqfds, the stop
    // event), the signalfd, epoll, the server connection, shared memory...
    assert!(assert_all_cloexec("VM", vm.child.id()) >= 10);
    assert!(assert_all_cloexec("server", server.child.id()) >= 5);
    assert!(assert_all_cloexec("client", client.child.id()) >= 4);
    for p in [&client, &vm, &server] {
        p.signal(libc::SIGTERM);
    }
    drop((client, vm));
    let out = server.finish(Duration::from_secs(10));
    assert_eq!(out.code(), 0, "{out:?}");
}

/// Greets with one own vector, then (once the peer is joined and confined)
/// sends /dev/null as peer 5's doorbell and a real eventfd for peer 6.
fn device_as_a_late_doorbell(s: &UnixStream) {
    let shm = ShmBackend::memfd(1 << 20, true).unwrap();
    let own = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC).unwrap();
    let peer = vmm_sys_util::eventfd::EventFd::new(libc::EFD_CLOEXEC).unwrap();
    let borrow = |e: &vmm_sys_util::eventfd::EventFd| {
        // SAFETY: the EventFds outlive this function's sends.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(std::os::fd::AsRawFd::as_raw_fd(e)) }
    };
    send(s, 0, None);
    send(s, 0, None);
    send(s, -1, Some(shm.file().as_fd()));
    send(s, 0, Some(borrow(&own)));
    std::thread::sleep(Duration::from_millis(1500));
    let null = fs::File::open("/dev/null").unwrap();
    send(s, 5, Some(null.as_fd()));
    send(s, 6, Some(borrow(&peer)));
}

#[test]
fn a_late_fd_that_is_no_eventfd_is_ignored_under_the_sandbox() {
    let fake = FakeServer::start(device_as_a_late_doorbell);
    let mut client = Running::ivvmm(&["client", "-S", fake.path(), "-n", "1"]);
    client.wait_for("joined id=6", Duration::from_secs(10));
    assert!(
        client
            .stderr()
            .contains("character device (/dev/null) as a doorbell of peer 5"),
        "{}",
        client.stderr()
    );
    client.signal(libc::SIGTERM);
    let out = client.finish(Duration::from_secs(5));
    assert_eq!(out.code(), 0, "{out:?}");
    if !require_kvm() {
        return;
    }
    let kernel = testguest(false);
    let mut vm = Running::ivvmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "test=pingpong role=pong rounds=1000",
        "--server",
        fake.path(),
    ]);
    vm.wait_for("as a doorbell of peer 5", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        vm.child.try_wait().unwrap(),
        None,
        "the VM goes on: {}",
        vm.stderr()
    );
    vm.signal(libc::SIGTERM);
    let out = vm.finish(Duration::from_secs(5));
    assert_eq!(out.code(), 128 + libc::SIGTERM, "{out:?}");
}
