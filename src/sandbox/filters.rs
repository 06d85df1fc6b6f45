// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The seccomp filters: one table per kind of thread, listing what that
//! thread does *after* set-up and why. Everything else stops the process.
//!
//! Read a table as "this thread may ...". An entry with conditions allows
//! the syscall only with those arguments (ioctls by request number); two
//! entries for one syscall mean either is fine.
//!
//! Which thread makes which KVM call, as the code stands:
//! - vCPU threads handle the guest's PIO/MMIO exits synchronously, so the
//!   guest's own device programming runs there: PCI config writes (BAR
//!   moves, memory decode, the MSI-X capability) and MSI-X table writes end
//!   in KVM_SET_USER_MEMORY_REGION (BAR2 slot), KVM_IOEVENTFD (doorbells
//!   follow BAR0), KVM_SET_GSI_ROUTING and KVM_IRQFD (vector routes and
//!   irqfds) and KVM_SIGNAL_MSI (a pending vector unmasked).
//! - The event-loop thread handles the server's messages (peers joining and
//!   leaving: KVM_IOEVENTFD), masked vectors firing (KVM_SIGNAL_MSI once the
//!   guest unmasked them) and the teardown after the last vCPU joined (irqfds
//!   and ioeventfds removed, the BAR2 slot dropped). It never routes MSIs.

use libc::c_long;

use super::ThreadKind;

/// One comparison on a syscall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cond {
    /// Argument `arg` equals `value`.
    Eq { arg: u8, value: u64 },
    /// Argument `arg` has none of the bits of `mask` set.
    NoneOf { arg: u8, mask: u64 },
}

/// One row of a table: the syscall may be made (with `when` holding, if any).
#[derive(Clone, Debug)]
pub struct Allow {
    pub nr: c_long,
    pub name: &'static str,
    pub why: &'static str,
    pub when: Vec<Cond>,
}

fn any(nr: c_long, name: &'static str, why: &'static str) -> Allow {
    Allow {
        nr,
        name,
        why,
        when: Vec::new(),
    }
}

fn when(nr: c_long, name: &'static str, why: &'static str, when: Vec<Cond>) -> Allow {
    Allow {
        nr,
        name,
        why,
        when,
    }
}

fn ioctl(request: u64, name: &'static str, why: &'static str) -> Allow {
    Allow {
        nr: libc::SYS_ioctl,
        name,
        why,
        when: vec![Cond::Eq {
            arg: 1,
            value: request,
        }],
    }
}

// ioctl request numbers (linux/ioctl.h: dir << 30 | size << 16 | type << 8 | nr).
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}
const fn iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const KVMIO: u64 = 0xae;
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub const KVM_SET_USER_MEMORY_REGION: u64 = iow(
    0x46,
    std::mem::size_of::<kvm_bindings::kvm_userspace_memory_region>(),
);
pub const KVM_SET_GSI_ROUTING: u64 =
    iow(0x6a, std::mem::size_of::<kvm_bindings::kvm_irq_routing>());
pub const KVM_IRQFD: u64 = iow(0x76, std::mem::size_of::<kvm_bindings::kvm_irqfd>());
pub const KVM_IOEVENTFD: u64 = iow(0x79, std::mem::size_of::<kvm_bindings::kvm_ioeventfd>());
pub const KVM_SIGNAL_MSI: u64 = iow(0xa5, std::mem::size_of::<kvm_bindings::kvm_msi>());
pub const KVM_CREATE_PIT2: u64 = iow(0x77, std::mem::size_of::<kvm_bindings::kvm_pit_config>());
/// Set on a socket by `set_nonblocking` (std uses FIONBIO, not fcntl).
pub const FIONBIO: u64 = libc::FIONBIO;
/// tcsetattr(TCSANOW): the terminal restored after raw mode.
pub const TCSETS: u64 = libc::TCSETS;
/// Issued by glibc's tcsetattr right after TCSETS, to verify it.
pub const TCGETS: u64 = libc::TCGETS;

fn no_exec(nr: c_long, name: &'static str, why: &'static str) -> Allow {
    when(
        nr,
        name,
        why,
        vec![Cond::NoneOf {
            arg: 2,
            mask: libc::PROT_EXEC as u64,
        }],
    )
}

/// glibc (2.33 on) makes fstat(fd) a newfstatat(fd, "", AT_EMPTY_PATH):
/// allowed on an fd only, never on a path.
fn fstat_fd() -> Allow {
    when(
        libc::SYS_newfstatat,
        "newfstatat(AT_EMPTY_PATH)",
        "fstat of a peer's fd, as glibc makes it",
        vec![Cond::Eq {
            arg: 3,
            value: libc::AT_EMPTY_PATH as u64,
        }],
    )
}

/// What every thread of ivvmm does: memory, locks, logging, exiting, and
/// glibc's abort() (a panic in the release build aborts).
fn runtime() -> Vec<Allow> {
    vec![
        any(
            libc::SYS_futex,
            "futex",
            "locks, condition variables, thread join",
        ),
        no_exec(
            libc::SYS_mmap,
            "mmap",
            "the allocator (never executable memory)",
        ),
        no_exec(
            libc::SYS_mprotect,
            "mprotect",
            "the allocator grows its arenas (never executable)",
        ),
        any(
            libc::SYS_munmap,
            "munmap",
            "the allocator; mappings released at teardown",
        ),
        any(
            libc::SYS_mremap,
            "mremap",
            "the allocator grows large buffers",
        ),
        any(
            libc::SYS_madvise,
            "madvise",
            "the allocator returns memory; thread stacks at exit",
        ),
        any(libc::SYS_brk, "brk", "the allocator's main heap"),
        any(
            libc::SYS_write,
            "write",
            "log lines on stderr, eventfd signals",
        ),
        any(libc::SYS_close, "close", "dropped fds"),
        when(
            libc::SYS_fcntl,
            "fcntl(F_GETFD)",
            "Rust checks an fd is open before closing it (debug builds)",
            vec![Cond::Eq {
                arg: 1,
                value: libc::F_GETFD as u64,
            }],
        ),
        any(
            libc::SYS_clock_gettime,
            "clock_gettime",
            "Instant::now where the vDSO falls back to the kernel",
        ),
        any(
            libc::SYS_sched_yield,
            "sched_yield",
            "start-up waits poll, yielding the CPU (placement::poll_briefly)",
        ),
        any(
            libc::SYS_rt_sigreturn,
            "rt_sigreturn",
            "returning from a signal handler",
        ),
        any(
            libc::SYS_sigaltstack,
            "sigaltstack",
            "Rust removes a thread's signal stack at thread exit",
        ),
        any(
            libc::SYS_rt_sigprocmask,
            "rt_sigprocmask",
            "glibc's abort() (a panic in the release build)",
        ),
        any(
            libc::SYS_getpid,
            "getpid",
            "glibc's pthread_kill/abort address the process",
        ),
        any(
            libc::SYS_gettid,
            "gettid",
            "glibc's abort() signals this thread",
        ),
        when(
            libc::SYS_tgkill,
            "tgkill",
            "glibc's abort() raises SIGABRT",
            vec![Cond::Eq {
                arg: 2,
                value: libc::SIGABRT as u64,
            }],
        ),
        any(libc::SYS_exit, "exit", "a thread ends"),
        any(libc::SYS_exit_group, "exit_group", "the process ends"),
    ]
}

/// Reading the server's messages after the handshake, and checking the
/// fds they carry (the VM's event loop and `ivvmm client`).
fn server_messages() -> Vec<Allow> {
    vec![
        any(
            libc::SYS_recvmsg,
            "recvmsg",
            "the server's messages (peers joining, with eventfds)",
        ),
        any(
            libc::SYS_readlink,
            "readlink",
            "/proc/self/fd/N: is a peer's fd an eventfd",
        ),
        any(
            libc::SYS_fstat,
            "fstat",
            "what a peer's fd that is no eventfd is (or, without /proc, is it one)",
        ),
        fstat_fd(),
    ]
}

/// A vCPU thread: KVM_RUN and the exits it handles itself.
fn vcpu() -> Vec<Allow> {
    let mut t = runtime();
    t.extend([
        ioctl(KVM_RUN, "ioctl(KVM_RUN)", "run the guest"),
        ioctl(
            KVM_GET_REGS,
            "ioctl(KVM_GET_REGS)",
            "the guest RIP in a fatal-exit message",
        ),
        ioctl(
            KVM_SET_USER_MEMORY_REGION,
            "ioctl(KVM_SET_USER_MEMORY_REGION)",
            "the guest moves BAR2 or toggles memory decode",
        ),
        ioctl(
            KVM_IOEVENTFD,
            "ioctl(KVM_IOEVENTFD)",
            "doorbells follow a BAR0 the guest moves",
        ),
        ioctl(
            KVM_SET_GSI_ROUTING,
            "ioctl(KVM_SET_GSI_ROUTING)",
            "the guest programs an MSI-X entry",
        ),
        ioctl(
            KVM_IRQFD,
            "ioctl(KVM_IRQFD)",
            "the guest masks/unmasks a vector or MSI-X",
        ),
        ioctl(
            KVM_SIGNAL_MSI,
            "ioctl(KVM_SIGNAL_MSI)",
            "a pending vector the guest unmasks is injected once",
        ),
        any(
            libc::SYS_clock_nanosleep,
            "clock_nanosleep",
            "KVM could not reach guest memory: wait for the event loop to unmap truncated shared memory",
        ),
    ]);
    t
}

/// vCPU 0's thread: a vCPU thread that creates the PIT beside the build,
/// already confined (vmm::build::BesideBuild). Only this thread may.
fn boot_vcpu() -> Vec<Allow> {
    let mut t = vcpu();
    t.push(ioctl(
        KVM_CREATE_PIT2,
        "ioctl(KVM_CREATE_PIT2)",
        "vCPU 0's thread creates the PIT beside the build, already confined (KVM refuses a second PIT)",
    ));
    t
}

/// The VM's main thread: the event loop (stdin, signals, the server
/// connection, masked vectors) and the teardown after it.
fn vmm() -> Vec<Allow> {
    let mut t = runtime();
    t.extend(server_messages());
    t.extend([
        any(libc::SYS_epoll_wait, "epoll_wait", "the event loop"),
        any(
            libc::SYS_epoll_ctl,
            "epoll_ctl",
            "stdin paused/resumed, masked vectors watched",
        ),
        any(
            libc::SYS_read,
            "read",
            "stdin, the signalfd, eventfds, the PVM hint timer",
        ),
        ioctl(
            KVM_IOEVENTFD,
            "ioctl(KVM_IOEVENTFD)",
            "a peer joins or leaves: its doorbells",
        ),
        ioctl(
            KVM_SIGNAL_MSI,
            "ioctl(KVM_SIGNAL_MSI)",
            "an event on a masked vector, delivered once unmasked",
        ),
        ioctl(KVM_IRQFD, "ioctl(KVM_IRQFD)", "teardown: irqfds detached"),
        ioctl(
            KVM_SET_USER_MEMORY_REGION,
            "ioctl(KVM_SET_USER_MEMORY_REGION)",
            "teardown: the BAR2 slot removed",
        ),
        ioctl(
            TCSETS,
            "ioctl(TCSETS)",
            "the terminal restored after raw mode",
        ),
        any(
            libc::SYS_timerfd_settime,
            "timerfd_settime",
            "a device a vCPU is busy with is looked at again 1 ms later",
        ),
        ioctl(
            TCGETS,
            "ioctl(TCGETS)",
            "glibc's tcsetattr reads the settings back to check them",
        ),
        when(
            libc::SYS_tgkill,
            "tgkill",
            "kick vCPU threads out of KVM_RUN at stop",
            vec![Cond::Eq {
                arg: 2,
                value: crate::stop::kick_signal() as u64,
            }],
        ),
    ]);
    t
}

/// `ivvmm server`: its one thread serves peers until SIGINT/SIGTERM, then
/// removes its socket, pidfile and the -M object it created.
fn server() -> Vec<Allow> {
    let mut t = runtime();
    t.extend([
        any(libc::SYS_epoll_wait, "epoll_wait", "the server's loop"),
        any(
            libc::SYS_epoll_ctl,
            "epoll_ctl",
            "peer sockets added, removed, watched for output",
        ),
        when(
            libc::SYS_accept4,
            "accept4",
            "a peer connects (close-on-exec)",
            vec![Cond::Eq {
                arg: 3,
                value: libc::SOCK_CLOEXEC as u64,
            }],
        ),
        when(
            libc::SYS_getsockopt,
            "getsockopt(SO_PEERCRED)",
            "which user a new peer runs as: others are refused",
            vec![
                Cond::Eq {
                    arg: 1,
                    value: libc::SOL_SOCKET as u64,
                },
                Cond::Eq {
                    arg: 2,
                    value: libc::SO_PEERCRED as u64,
                },
            ],
        ),
        ioctl(
            FIONBIO,
            "ioctl(FIONBIO)",
            "a peer's socket made non-blocking",
        ),
        when(
            libc::SYS_eventfd2,
            "eventfd2",
            "a new peer's vectors (non-blocking, close-on-exec)",
            vec![Cond::Eq {
                arg: 1,
                value: (libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) as u64,
            }],
        ),
        any(libc::SYS_sendmsg, "sendmsg", "messages to peers, with fds"),
        any(
            libc::SYS_recvfrom,
            "recvfrom",
            "why a peer's socket became readable (it must not send)",
        ),
        any(
            libc::SYS_read,
            "read",
            "the signalfd that stops the server; the pidfile at exit",
        ),
        any(
            libc::SYS_statx,
            "statx",
            "exit: is the socket/pidfile still ours",
        ),
        any(
            libc::SYS_newfstatat,
            "newfstatat",
            "exit: is the -M object still ours",
        ),
        any(libc::SYS_fstat, "fstat", "exit: reading the pidfile"),
        any(libc::SYS_lseek, "lseek", "exit: reading the pidfile"),
        when(
            libc::SYS_openat,
            "openat",
            "exit: the pidfile, read-only",
            vec![Cond::NoneOf {
                arg: 2,
                mask: (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64,
            }],
        ),
        any(
            libc::SYS_unlink,
            "unlink",
            "exit: removing our socket, pidfile, -M object",
        ),
    ]);
    t
}

/// `ivvmm client`: after joining, it follows, rings, waits, dumps or
/// measures round trips.
fn client() -> Vec<Allow> {
    let mut t = runtime();
    t.extend(server_messages());
    t.extend([
        any(
            libc::SYS_poll,
            "poll",
            "waiting for a vector, the server or a signal",
        ),
        any(libc::SYS_read, "read", "eventfds, the signalfd"),
        any(
            libc::SYS_clock_nanosleep,
            "clock_nanosleep",
            "ping: pauses while looking for a pong",
        ),
    ]);
    t
}

/// A doorbell device's rejoin thread (devices/ivshmem/rejoin.rs): after
/// the server is lost it connects to the same socket path again and runs
/// the handshake.
fn rejoin() -> Vec<Allow> {
    let mut t = runtime();
    t.extend(server_messages());
    t.extend(joining());
    t
}

/// `ivvmm client --rejoin`: the client, and joining the server again.
fn client_rejoin() -> Vec<Allow> {
    let mut t = client();
    t.extend(joining());
    t
}

/// Connecting to a server and the handshake, with its trust checks. No
/// other network: the socket domain must be AF_UNIX. Always beside
/// [`server_messages`]: the handshake reads its messages (the memory fd,
/// the eventfds) and checks their fds with the same `recvmsg`, `readlink`
/// and `fstat`; whether the memory is ours is an `fstat` too.
fn joining() -> Vec<Allow> {
    vec![
        when(
            libc::SYS_socket,
            "socket(AF_UNIX)",
            "a new connection to the server's socket path",
            vec![Cond::Eq {
                arg: 0,
                value: libc::AF_UNIX as u64,
            }],
        ),
        any(libc::SYS_connect, "connect", "to the server's socket path"),
        any(
            libc::SYS_geteuid,
            "geteuid",
            "the socket and the server must be ours (or root's)",
        ),
        any(
            libc::SYS_setsockopt,
            "setsockopt",
            "the handshake's receive timeout",
        ),
        any(
            libc::SYS_getsockopt,
            "getsockopt",
            "who the server is (SO_PEERCRED)",
        ),
        any(libc::SYS_poll, "poll", "the handshake waits for messages"),
        any(libc::SYS_read, "read", "the handshake"),
        ioctl(
            FIONBIO,
            "ioctl(FIONBIO)",
            "the new connection made non-blocking for the event loop",
        ),
        when(
            libc::SYS_fcntl,
            "fcntl(F_DUPFD_CLOEXEC)",
            "our own eventfds duplicated as our doorbells to ourselves",
            vec![Cond::Eq {
                arg: 1,
                value: libc::F_DUPFD_CLOEXEC as u64,
            }],
        ),
        when(
            libc::SYS_fcntl,
            "fcntl(F_GET_SEALS)",
            "is an offered memfd sealed against shrinking (said once at -v)",
            vec![Cond::Eq {
                arg: 1,
                value: libc::F_GET_SEALS as u64,
            }],
        ),
        any(
            libc::SYS_newfstatat,
            "newfstatat",
            "fstat through glibc (AT_EMPTY_PATH)",
        ),
        any(libc::SYS_statx, "statx", "fstat through Rust's std"),
        any(
            libc::SYS_fstatfs,
            "fstatfs",
            "is the offered memory on hugetlbfs (its page size)",
        ),
    ]
}

/// The table for `kind`.
pub fn table(kind: ThreadKind) -> Vec<Allow> {
    match kind {
        ThreadKind::Vmm => vmm(),
        ThreadKind::Vcpu => vcpu(),
        ThreadKind::BootVcpu => boot_vcpu(),
        ThreadKind::Server => server(),
        ThreadKind::Client => client(),
        // It writes guest output and waits on its buffer's condition
        // variables: what every thread does, nothing more.
        ThreadKind::SerialOut => runtime(),
        ThreadKind::Rejoin => rejoin(),
        ThreadKind::ClientRejoin => client_rejoin(),
    }
}

/// Names for the violation message (read by the SIGSYS handler, so a plain
/// static): the syscalls of the tables and those a bug or an exploit would
/// plausibly try. Others are reported by number only.
pub static SYSCALL_NAMES: &[(c_long, &str)] = &[
    (libc::SYS_read, "read"),
    (libc::SYS_write, "write"),
    (libc::SYS_open, "open"),
    (libc::SYS_close, "close"),
    (libc::SYS_stat, "stat"),
    (libc::SYS_fstat, "fstat"),
    (libc::SYS_lstat, "lstat"),
    (libc::SYS_poll, "poll"),
    (libc::SYS_lseek, "lseek"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_munmap, "munmap"),
    (libc::SYS_brk, "brk"),
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_rt_sigprocmask, "rt_sigprocmask"),
    (libc::SYS_rt_sigreturn, "rt_sigreturn"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_pread64, "pread64"),
    (libc::SYS_pwrite64, "pwrite64"),
    (libc::SYS_readv, "readv"),
    (libc::SYS_writev, "writev"),
    (libc::SYS_access, "access"),
    (libc::SYS_pipe, "pipe"),
    (libc::SYS_select, "select"),
    (libc::SYS_sched_yield, "sched_yield"),
    (libc::SYS_mremap, "mremap"),
    (libc::SYS_madvise, "madvise"),
    (libc::SYS_dup, "dup"),
    (libc::SYS_dup2, "dup2"),
    (libc::SYS_nanosleep, "nanosleep"),
    (libc::SYS_getpid, "getpid"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_accept, "accept"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvmsg, "recvmsg"),
    (libc::SYS_shutdown, "shutdown"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_getsockopt, "getsockopt"),
    (libc::SYS_setsockopt, "setsockopt"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_fork, "fork"),
    (libc::SYS_vfork, "vfork"),
    (libc::SYS_execve, "execve"),
    (libc::SYS_exit, "exit"),
    (libc::SYS_wait4, "wait4"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_uname, "uname"),
    (libc::SYS_fcntl, "fcntl"),
    (libc::SYS_flock, "flock"),
    (libc::SYS_fsync, "fsync"),
    (libc::SYS_ftruncate, "ftruncate"),
    (libc::SYS_getdents64, "getdents64"),
    (libc::SYS_getcwd, "getcwd"),
    (libc::SYS_chdir, "chdir"),
    (libc::SYS_rename, "rename"),
    (libc::SYS_mkdir, "mkdir"),
    (libc::SYS_rmdir, "rmdir"),
    (libc::SYS_link, "link"),
    (libc::SYS_unlink, "unlink"),
    (libc::SYS_symlink, "symlink"),
    (libc::SYS_readlink, "readlink"),
    (libc::SYS_chmod, "chmod"),
    (libc::SYS_fchmod, "fchmod"),
    (libc::SYS_chown, "chown"),
    (libc::SYS_umask, "umask"),
    (libc::SYS_getrlimit, "getrlimit"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_getuid, "getuid"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_setgid, "setgid"),
    (libc::SYS_geteuid, "geteuid"),
    (libc::SYS_setsid, "setsid"),
    (libc::SYS_sigaltstack, "sigaltstack"),
    (libc::SYS_statfs, "statfs"),
    (libc::SYS_fstatfs, "fstatfs"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_setrlimit, "setrlimit"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_gettid, "gettid"),
    (libc::SYS_tkill, "tkill"),
    (libc::SYS_futex, "futex"),
    (libc::SYS_sched_getaffinity, "sched_getaffinity"),
    (libc::SYS_epoll_create, "epoll_create"),
    (libc::SYS_getdents, "getdents"),
    (libc::SYS_clock_gettime, "clock_gettime"),
    (libc::SYS_clock_nanosleep, "clock_nanosleep"),
    (libc::SYS_exit_group, "exit_group"),
    (libc::SYS_epoll_wait, "epoll_wait"),
    (libc::SYS_epoll_ctl, "epoll_ctl"),
    (libc::SYS_tgkill, "tgkill"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_newfstatat, "newfstatat"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_renameat, "renameat"),
    (libc::SYS_readlinkat, "readlinkat"),
    (libc::SYS_fchmodat, "fchmodat"),
    (libc::SYS_faccessat, "faccessat"),
    (libc::SYS_ppoll, "ppoll"),
    (libc::SYS_splice, "splice"),
    (libc::SYS_epoll_pwait, "epoll_pwait"),
    (libc::SYS_signalfd4, "signalfd4"),
    (libc::SYS_timerfd_create, "timerfd_create"),
    (libc::SYS_timerfd_settime, "timerfd_settime"),
    (libc::SYS_eventfd2, "eventfd2"),
    (libc::SYS_epoll_create1, "epoll_create1"),
    (libc::SYS_dup3, "dup3"),
    (libc::SYS_pipe2, "pipe2"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_prlimit64, "prlimit64"),
    (libc::SYS_sendmmsg, "sendmmsg"),
    (libc::SYS_recvmmsg, "recvmmsg"),
    (libc::SYS_getrandom, "getrandom"),
    (libc::SYS_memfd_create, "memfd_create"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_statx, "statx"),
    (libc::SYS_rseq, "rseq"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_pidfd_open, "pidfd_open"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_seccomp, "seccomp"),
];

/// The name of syscall `nr`, if the table has it.
pub fn syscall_name(nr: c_long) -> Option<&'static str> {
    SYSCALL_NAMES
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| *name)
}
