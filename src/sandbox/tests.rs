// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Each filter installed in a forked child: what the table allows runs, what
//! it doesn't stops the child with exit 159 and the one-line message.

use super::filters::{self, Cond};
use super::*;

/// What a child did: its exit status (or -signal) and its stderr.
struct ChildOutcome {
    code: i32,
    stderr: String,
}

/// Forks; the child installs `kind`'s filter in `mode`, runs `body` (raw
/// syscalls only: the parent is multi-threaded) and exits 0.
fn in_child(kind: ThreadKind, mode: SeccompMode, body: impl Fn()) -> ChildOutcome {
    let program = compile(kind, mode).expect("filter compiles");
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes raw syscalls (apply() allocates nothing
    // on success) and ends with _exit, so fork in a threaded test is sound.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: in the child: plain fd syscalls, then _exit.
        unsafe {
            libc::dup2(fds[1], libc::STDERR_FILENO);
            libc::close(fds[0]);
            if apply(kind, &program).is_err() {
                libc::_exit(100);
            }
        }
        body();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: our copy of the write end; the read end is ours to read.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    let mut status = 0;
    // SAFETY: waiting for our own child; closing our read end.
    unsafe {
        libc::close(fds[0]);
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    ChildOutcome {
        code,
        stderr: String::from_utf8_lossy(&out).into_owned(),
    }
}

fn syscall6(nr: libc::c_long, a: [u64; 6]) -> libc::c_long {
    // SAFETY: only called with arguments chosen to fail harmlessly (bad fd,
    // bad pointer, zero length) or to create a throwaway fd in a child.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// Arguments meeting `when`; the rest -1 for the first (a bad fd or
/// pointer) and 0 after, so every call fails or does nothing.
fn harmless_args(when: &[Cond]) -> [u64; 6] {
    let mut a = [u64::MAX, 0, 0, 0, 0, 0];
    for c in when {
        match *c {
            Cond::Eq { arg, value } => a[usize::from(arg)] = value,
            Cond::NoneOf { arg, .. } => a[usize::from(arg)] = 0,
        }
    }
    a
}

/// Syscalls the allowed-calls test must not make for real.
fn ends_or_breaks_the_child(nr: libc::c_long) -> bool {
    [libc::SYS_exit, libc::SYS_exit_group, libc::SYS_rt_sigreturn].contains(&nr)
}

fn assert_stopped(out: &ChildOutcome, kind: ThreadKind, nr: libc::c_long, name: &str) {
    assert_eq!(out.code, VIOLATION_EXIT, "stderr: {}", out.stderr);
    let want = format!("the {} thread made syscall {nr} ({name})", kind.name());
    assert!(
        out.stderr.contains(&want),
        "{:?} lacks {want:?}",
        out.stderr
    );
    assert!(out.stderr.contains("--seccomp log"), "{:?}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
}

#[test]
fn every_allowed_syscall_runs_under_its_filter() {
    for kind in ThreadKind::ALL {
        let table = filters::table(kind);
        let out = in_child(kind, SeccompMode::On, || {
            for allow in &table {
                if !ends_or_breaks_the_child(allow.nr) {
                    syscall6(allow.nr, harmless_args(&allow.when));
                }
            }
        });
        assert_eq!(out.code, 0, "{}: {}", kind.name(), out.stderr);
    }
}

#[test]
fn a_socket_stops_every_kind_with_exit_159_and_one_line() {
    for kind in ThreadKind::ALL {
        let out = in_child(kind, SeccompMode::On, || {
            syscall6(
                libc::SYS_socket,
                [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            );
        });
        assert_stopped(&out, kind, libc::SYS_socket, "socket");
    }
}

#[test]
fn execve_stops_every_kind() {
    for kind in ThreadKind::ALL {
        let out = in_child(kind, SeccompMode::On, || {
            syscall6(libc::SYS_execve, [0; 6]);
        });
        assert_stopped(&out, kind, libc::SYS_execve, "execve");
    }
}

#[test]
fn ioctls_are_filtered_by_request_number() {
    // KVM_CREATE_VM on /dev/kvm's fd would be the next step of an escape.
    const KVM_CREATE_VM: u64 = 0xae01;
    let forbidden = [
        (ThreadKind::Vcpu, KVM_CREATE_VM),
        (ThreadKind::Vcpu, filters::TCSETS),
        // vCPU 0's thread only (it creates the PIT, confined).
        (ThreadKind::Vcpu, filters::KVM_CREATE_PIT2),
        (ThreadKind::Vmm, filters::KVM_RUN),
        (ThreadKind::Vmm, filters::KVM_SET_GSI_ROUTING),
        (ThreadKind::Server, filters::KVM_RUN),
        (ThreadKind::Client, filters::FIONBIO),
    ];
    for (kind, request) in forbidden {
        let out = in_child(kind, SeccompMode::On, || {
            syscall6(libc::SYS_ioctl, [u64::MAX, request, 0, 0, 0, 0]);
        });
        assert_stopped(&out, kind, libc::SYS_ioctl, "ioctl");
    }
    // The same requests the other kinds may make go through.
    let out = in_child(ThreadKind::Vcpu, SeccompMode::On, || {
        syscall6(libc::SYS_ioctl, [u64::MAX, filters::KVM_RUN, 0, 0, 0, 0]);
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = in_child(ThreadKind::BootVcpu, SeccompMode::On, || {
        syscall6(
            libc::SYS_ioctl,
            [u64::MAX, filters::KVM_CREATE_PIT2, 0, 0, 0, 0],
        );
    });
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn arguments_are_filtered_where_it_matters() {
    let prot_exec = libc::PROT_READ | libc::PROT_EXEC;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let cases: [(ThreadKind, libc::c_long, &str, [u64; 6]); 5] = [
        // Executable memory: what shellcode needs.
        (
            ThreadKind::Vcpu,
            libc::SYS_mmap,
            "mmap",
            [0, 4096, prot_exec as u64, anon as u64, u64::MAX, 0],
        ),
        (
            ThreadKind::Vmm,
            libc::SYS_mprotect,
            "mprotect",
            [0, 0, prot_exec as u64, 0, 0, 0],
        ),
        // The VMM signals its vCPUs with the kick signal only.
        (
            ThreadKind::Vmm,
            libc::SYS_tgkill,
            "tgkill",
            [u64::MAX, 0, libc::SIGKILL as u64, 0, 0, 0],
        ),
        // The server opens its pidfile read-only, nothing else.
        (
            ThreadKind::Server,
            libc::SYS_openat,
            "openat",
            [
                u64::MAX,
                0,
                (libc::O_WRONLY | libc::O_CREAT) as u64,
                0,
                0,
                0,
            ],
        ),
        // Accepted sockets are close-on-exec.
        (
            ThreadKind::Server,
            libc::SYS_accept4,
            "accept4",
            [u64::MAX, 0, 0, 0, 0, 0],
        ),
    ];
    for (kind, nr, name, args) in cases {
        let out = in_child(kind, SeccompMode::On, || {
            syscall6(nr, args);
        });
        assert_stopped(&out, kind, nr, name);
    }
}

#[test]
fn log_mode_lets_a_forbidden_syscall_through() {
    for kind in ThreadKind::ALL {
        let out = in_child(kind, SeccompMode::Log, || {
            let fd = syscall6(
                libc::SYS_socket,
                [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0],
            );
            if fd < 0 {
                // SAFETY: _exit in the child; 3 tells the parent socket() failed.
                unsafe { libc::_exit(3) };
            }
        });
        assert_eq!(out.code, 0, "{}: {}", kind.name(), out.stderr);
    }
}

#[test]
fn off_installs_nothing() {
    assert!(install(ThreadKind::Vcpu, SeccompMode::Off).is_ok());
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert!(status.contains("Seccomp:\t0"), "{status}");
}

#[test]
fn kvm_ioctl_numbers_match_the_kernel_headers() {
    assert_eq!(filters::KVM_RUN, 0xae80);
    assert_eq!(filters::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(filters::KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
    assert_eq!(filters::KVM_SET_GSI_ROUTING, 0x4008_ae6a);
    assert_eq!(filters::KVM_IRQFD, 0x4020_ae76);
    assert_eq!(filters::KVM_IOEVENTFD, 0x4040_ae79);
    assert_eq!(filters::KVM_SIGNAL_MSI, 0x4020_aea5);
    assert_eq!(filters::KVM_CREATE_PIT2, 0x4040_ae77);
}

#[test]
fn the_violation_line_names_the_syscall_and_the_fix() {
    let line = violation_line(libc::SYS_socket, Some(ThreadKind::Vcpu));
    let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
    assert!(
        text.starts_with("ivvmm: seccomp: the vCPU thread made syscall 41 (socket), "),
        "{text}"
    );
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "{text}"
    );
    let line = violation_line(999, None);
    let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
    assert!(
        text.contains("the unknown thread made syscall 999, which"),
        "{text}"
    );
}

#[test]
fn every_table_entry_has_a_name_for_the_message_and_a_reason() {
    for kind in ThreadKind::ALL {
        for allow in filters::table(kind) {
            assert!(filters::syscall_name(allow.nr).is_some(), "{}", allow.name);
            assert!(!allow.why.is_empty(), "{}", allow.name);
        }
    }
}

#[test]
fn the_start_gate_releases_waiters_with_the_verdict() {
    let gate = std::sync::Arc::new(StartGate::default());
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let g = gate.clone();
            std::thread::spawn(move || g.wait())
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    gate.open(false);
    for w in waiters {
        assert!(!w.join().unwrap());
    }
    assert!(!gate.wait(), "late waiters see it too");
}
