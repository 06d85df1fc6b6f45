// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Why a VM stops, who asked first, and the exit status that follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The real-time signal that carries a stop into vCPU threads: it kicks
/// them out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Starts a helper thread with every asynchronous signal blocked (it inherits the mask
/// in force while it is created): SIGINT/SIGTERM belong to the signalfd of
/// the thread that stops us in order, and a thread that left them
/// unblocked would take them with their default action, killing the
/// process without a stop.
pub fn spawn_without_signals<F>(name: &str, f: F) -> std::io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let mut blocked = SigSet::all();
    // Except the synchronous ones: the kernel forces those through a mask
    // with their default action, which would bypass the seccomp violation
    // handler (SIGSYS) and the panic/abort paths.
    for sync in [
        Signal::SIGSYS,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGILL,
        Signal::SIGFPE,
        Signal::SIGABRT,
    ] {
        blocked.remove(sync);
    }
    let old = blocked.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    let spawned = crate::placement::spawn_beside(name, f);
    if let Ok(old) = old {
        let _ = old.thread_set_mask();
    }
    spawned
}

/// Turns SIGINT, SIGTERM and `extra` into events: blocks them in the calling
/// thread (threads it starts later inherit the mask, so no other thread
/// takes them) and returns a non-blocking signalfd that reads them. Call it
/// before anything that a signal should stop in order: a signal that comes
/// early waits, pending, until the signalfd is read. The fd also reads the
/// signals of a child after `fork`.
pub fn signals_as_events(extra: &[Signal]) -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    for &signal in extra {
        set.add(signal);
    }
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

/// The first reason to stop wins; later ones are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote a byte to the debug exit port.
    ExitPort(u8),
    /// The guest reset the machine (i8042 reset line, `reboot=k`, or the
    /// ACPI reset register).
    Reset,
    /// The guest powered off: ACPI S5 through the FADT sleep control register.
    PowerOff,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN), which is how a CPU resets.
    TripleFault,
    /// KVM reported a guest-initiated shutdown or reset system event.
    SystemEvent(u32),
    /// The user typed the serial escape (Ctrl-A x).
    UserQuit,
    /// SIGINT or SIGTERM reached the VMM.
    Signal(i32),
    /// Something the VMM can't recover from; the text is the message for the user.
    Fatal(String),
}

impl StopReason {
    /// The process exit status this reason maps to.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::ExitPort(code) => i32::from(*code),
            StopReason::Reset
            | StopReason::PowerOff
            | StopReason::TripleFault
            | StopReason::SystemEvent(_)
            | StopReason::UserQuit => 0,
            StopReason::Signal(signo) => 128 + signo,
            StopReason::Fatal(_) => 1,
        }
    }

    /// A one-line description for the log.
    pub fn describe(&self) -> String {
        match self {
            StopReason::ExitPort(code) => format!("guest wrote {code} to the exit port"),
            StopReason::Reset => "guest reset the machine".to_string(),
            StopReason::PowerOff => "guest powered off (ACPI S5)".to_string(),
            StopReason::TripleFault => "guest triple-faulted (CPU reset)".to_string(),
            StopReason::SystemEvent(t) => format!("guest system event {t}"),
            StopReason::UserQuit => "user quit (Ctrl-A x)".to_string(),
            StopReason::Signal(s) => format!("signal {s}"),
            StopReason::Fatal(msg) => msg.clone(),
        }
    }
}

/// Shared by vCPU threads, devices and the event loop.
pub struct VmStop {
    stopping: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    /// Wakes the event loop; readable once a stop was requested.
    pub event: EventFd,
}

impl VmStop {
    pub fn new() -> std::io::Result<Self> {
        Ok(VmStop {
            stopping: AtomicBool::new(false),
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Asks the VM to stop. Only the first reason is kept.
    pub fn request(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            self.stopping.store(true, Ordering::SeqCst);
            // A full counter still wakes the loop, so the error is harmless.
            let _ = self.event.write(1);
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_wakes_the_loop() {
        let stop = VmStop::new().unwrap();
        assert!(!stop.is_stopping());
        assert!(stop.event.read().is_err(), "nothing to read yet");
        stop.request(StopReason::ExitPort(3));
        stop.request(StopReason::Signal(15));
        assert!(stop.is_stopping());
        assert_eq!(stop.reason(), Some(StopReason::ExitPort(3)));
        assert_eq!(stop.event.read().unwrap(), 1);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::ExitPort(0).exit_code(), 0);
        assert_eq!(StopReason::ExitPort(42).exit_code(), 42);
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::PowerOff.exit_code(), 0);
        assert_eq!(StopReason::TripleFault.exit_code(), 0);
        assert_eq!(StopReason::Signal(15).exit_code(), 143);
        assert_eq!(StopReason::Fatal("x".into()).exit_code(), 1);
    }
}
