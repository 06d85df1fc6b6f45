// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The seccomp sandbox: each thread confines itself, after its set-up and
//! before it touches anything a guest or a peer controls, to the syscalls
//! its kind of thread needs ([`filters`]).
//!
//! - VM: every vCPU thread installs the vCPU filter before its first
//!   KVM_RUN; the main thread installs the event-loop filter after spawning
//!   the vCPUs and before its loop, and only then lets the vCPUs run (a
//!   [`StartGate`]). A thread created later inherits its creator's filter
//!   (none may: `clone` is not allowed).
//! - `ivvmm server` / `ivvmm client`: one filter for every thread of the
//!   process (seccomp's TSYNC), before the first peer is served or rung.
//!
//! `PR_SET_NO_NEW_PRIVS` comes first (seccompiler sets it), so nothing the
//! process executes could gain privileges either.
//!
//! A violation ([`SeccompMode::On`]) raises SIGSYS (SECCOMP_RET_TRAP); the
//! handler writes one line naming the syscall, the thread kind and the fix,
//! and exits with 159 (128 + SIGSYS). [`SeccompMode::Log`] allows the call
//! and has the kernel log it (SECCOMP_RET_LOG: the audit log / dmesg).

pub mod filters;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, Once};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use thiserror::Error;

use filters::Cond;

/// The exit status after a violation: 128 + SIGSYS.
pub const VIOLATION_EXIT: i32 = 128 + libc::SIGSYS;

/// `--seccomp on|log|off`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// A syscall outside the filter stops the process (exit 159).
    #[default]
    On,
    /// A syscall outside the filter is allowed and logged by the kernel
    /// (audit log / dmesg).
    Log,
    /// No filter.
    Off,
}

/// The kinds of thread, each with its own table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadKind {
    /// The VM's main thread: event loop and teardown.
    Vmm = 1,
    /// A vCPU thread.
    Vcpu = 2,
    /// Every thread of `ivvmm server`.
    Server = 3,
    /// Every thread of `ivvmm client`.
    Client = 4,
    /// The VM's serial output writer (see devices::serial_output).
    SerialOut = 5,
    /// A doorbell device's rejoin thread (see devices::ivshmem::rejoin).
    Rejoin = 6,
    /// Every thread of `ivvmm client --rejoin`.
    ClientRejoin = 7,
    /// vCPU 0's thread, which confines itself before its last set-up step
    /// (vmm::build::BesideBuild): a vCPU thread that may create the PIT.
    BootVcpu = 8,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::BootVcpu,
        ThreadKind::Server,
        ThreadKind::Client,
        ThreadKind::SerialOut,
        ThreadKind::Rejoin,
        ThreadKind::ClientRejoin,
    ];

    /// As the violation message names it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "VM event-loop",
            ThreadKind::Vcpu | ThreadKind::BootVcpu => "vCPU",
            ThreadKind::Server => "server",
            ThreadKind::Client => "client",
            ThreadKind::SerialOut => "serial output",
            ThreadKind::Rejoin => "ivshmem rejoin",
            ThreadKind::ClientRejoin => "client",
        }
    }

    fn from_u8(v: u8) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("seccomp: building the {kind} filter failed: {err}")]
    Build {
        kind: &'static str,
        err: seccompiler::BackendError,
    },
    #[error("seccomp: installing the {kind} filter failed: {err}; this kernel needs seccomp filters (CONFIG_SECCOMP_FILTER), or run with --seccomp off")]
    Install {
        kind: &'static str,
        err: seccompiler::Error,
    },
    #[error("seccomp: installing the SIGSYS handler failed: {0}")]
    Handler(std::io::Error),
}

/// Compiles `kind`'s table. Syscalls outside it get `mode`'s action.
pub fn compile(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
    let build = |err| SandboxError::Build {
        kind: kind.name(),
        err,
    };
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut unconditional = BTreeSet::new();
    for allow in filters::table(kind) {
        let entry = rules.entry(allow.nr).or_default();
        if allow.when.is_empty() {
            unconditional.insert(allow.nr);
            continue;
        }
        let conds = allow
            .when
            .iter()
            .map(|c| condition(*c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(build)?;
        entry.push(SeccompRule::new(conds).map_err(build)?);
    }
    // An empty chain matches every call of that syscall.
    for nr in unconditional {
        rules.insert(nr, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        std::env::consts::ARCH.try_into().map_err(build)?,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

fn condition(c: Cond) -> Result<SeccompCondition, seccompiler::BackendError> {
    match c {
        // ioctl requests, flags and signal numbers are ints: compare 32 bits
        // (the kernel ignores the upper half of an int argument too).
        Cond::Eq { arg, value } => {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        }
        Cond::NoneOf { arg, mask } => SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        ),
    }
}

/// Confines the calling thread (and, for the server and the client, every
/// thread of the process) to `kind`'s filter. `Off` does nothing.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let program = compile(kind, mode)?;
    apply(kind, &program)
}

/// Installs an already compiled `program` (allocates nothing, so a forked
/// child of a threaded process may call it).
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), SandboxError> {
    install_sigsys_handler()?;
    THREAD_KIND.with(|k| k.set(kind as u8));
    let installed = match kind {
        ThreadKind::Server | ThreadKind::Client | ThreadKind::ClientRejoin => {
            seccompiler::apply_filter_all_threads(program)
        }
        ThreadKind::Vmm
        | ThreadKind::Vcpu
        | ThreadKind::BootVcpu
        | ThreadKind::SerialOut
        | ThreadKind::Rejoin => seccompiler::apply_filter(program),
    };
    installed.map_err(|err| SandboxError::Install {
        kind: kind.name(),
        err,
    })
}

thread_local! {
    /// This thread's kind, for the SIGSYS handler (const: no lazy init there).
    static THREAD_KIND: Cell<u8> = const { Cell::new(0) };
}

fn install_sigsys_handler() -> Result<(), SandboxError> {
    static ONCE: Once = Once::new();
    static ERRNO: AtomicI32 = AtomicI32::new(0);
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we fill handler and flags.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: sa is fully initialised; the handler is async-signal-safe.
        let rc = unsafe {
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
            ERRNO.store(errno, Ordering::SeqCst);
        }
    });
    let errno = ERRNO.load(Ordering::SeqCst);
    if errno != 0 {
        return Err(SandboxError::Handler(std::io::Error::from_raw_os_error(
            errno,
        )));
    }
    Ok(())
}

/// The SIGSYS part of `siginfo_t` (asm-generic/siginfo.h, 64-bit).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer the handler formats into (no allocation in a handler).
struct Line {
    buf: [u8; 320],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The violation message for syscall `nr` in a thread of `kind`.
fn violation_line(nr: i64, kind: Option<ThreadKind>) -> Line {
    let mut line = Line {
        buf: [0; 320],
        len: 0,
    };
    line.push(b"ivvmm: seccomp: the ");
    line.push(kind.map_or("unknown", ThreadKind::name).as_bytes());
    line.push(b" thread made syscall ");
    line.number(nr as u64);
    if let Some(name) = filters::syscall_name(nr) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b", which its filter does not allow; stopped (exit 159). Run with --seccomp log to see what the filter misses (kernel log), and report it\n");
    line
}

extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only async-signal-safe work: read siginfo and a const thread-local,
    // format into a stack buffer, write(2), _exit(2).
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo; for SIGSYS from seccomp
        // its union holds the _sigsys layout mirrored by SigsysInfo.
        i64::from(unsafe { (*(info as *const SigsysInfo)).syscall })
    };
    let kind = ThreadKind::from_u8(THREAD_KIND.with(|k| k.get()));
    let line = violation_line(nr, kind);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(VIOLATION_EXIT);
    }
}

/// Lets vCPU threads into the guest only once the event-loop thread is
/// confined too, so no guest instruction runs before every thread is.
#[derive(Default)]
pub struct StartGate {
    /// [`CLOSED`](Self::CLOSED), [`GO`](Self::GO) or [`DONT`](Self::DONT):
    /// read without a lock while a vCPU polls (see
    /// [`poll_briefly`](crate::placement::poll_briefly)), under `lock` once
    /// it sleeps on `cv`.
    state: AtomicU8,
    lock: Mutex<()>,
    cv: Condvar,
}

impl StartGate {
    const CLOSED: u8 = 0;
    const GO: u8 = 1;
    const DONT: u8 = 2;

    /// Opens the gate; `go` false: the VM is stopping, don't run the guest.
    pub fn open(&self, go: bool) {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let state = if go { Self::GO } else { Self::DONT };
        self.state.store(state, Ordering::Release);
        self.cv.notify_all();
    }

    /// Waits until opened; returns whether to run.
    pub fn wait(&self) -> bool {
        let opened = || self.state.load(Ordering::Acquire) != Self::CLOSED;
        if !crate::placement::poll_briefly(opened) {
            let mut held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            while !opened() {
                held = self.cv.wait(held).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.state.load(Ordering::Acquire) == Self::GO
    }
}

#[cfg(test)]
mod tests;

/// Helper threads started while the VM is built (serial output, rejoin)
/// whose filter is not confirmed yet: they install it themselves, in
/// parallel with the rest of the build, and [`helpers_confined`] waits
/// for them before the first guest instruction.
static PENDING: std::sync::Mutex<Vec<std::sync::mpsc::Receiver<Result<(), String>>>> =
    std::sync::Mutex::new(Vec::new());

/// Starts a helper thread (every asynchronous signal blocked) that first
/// confines itself as `kind`, then runs `f`. Does not wait for it.
pub fn spawn_confined<F>(
    kind: ThreadKind,
    mode: SeccompMode,
    name: &str,
    f: F,
) -> std::io::Result<()>
where
    F: FnOnce() + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    crate::stop::spawn_without_signals(name, move || {
        let installed = install(kind, mode).map_err(|e| e.to_string());
        let ok = installed.is_ok();
        let _ = tx.send(installed);
        if ok {
            f();
        }
    })?;
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).push(rx);
    Ok(())
}

/// Waits until every helper thread started so far is under its filter.
pub fn helpers_confined() -> Result<(), String> {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for rx in pending {
        match crate::placement::recv_soon(&rx) {
            Ok(result) => result?,
            Err(_) => return Err("a helper thread ended before confining itself".into()),
        }
    }
    Ok(())
}
