// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Raw mode for an interactive stdin, restored on every way out.
//!
//! Keystrokes go to the guest unchanged (no line editing, no echo, no
//! signals from Ctrl-C: the guest gets it); output processing stays on so
//! the host terminal still renders the guest's lines. The original settings
//! come back when the guard drops, and also from the panic hook and before
//! any `process::exit`, through [`restore_now`].

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use nix::sys::termios::{self, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Restores the terminal when dropped.
pub struct RawModeGuard(());

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(libc::STDIN_FILENO) }
}

/// Puts stdin in raw mode if it is a terminal; `None` otherwise.
pub fn enter_raw_mode() -> Option<RawModeGuard> {
    let fd = stdin_fd();
    if !nix::unistd::isatty(fd).unwrap_or(false) {
        return None;
    }
    let original = termios::tcgetattr(fd).ok()?;
    let mut raw = original.clone();
    raw.local_flags &=
        !(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
    raw.input_flags &=
        !(InputFlags::IXON | InputFlags::ICRNL | InputFlags::INLCR | InputFlags::IGNCR);
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
    if termios::tcsetattr(fd, SetArg::TCSANOW, &raw).is_err() {
        SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
        return None;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_now();
        previous(info);
    }));
    Some(RawModeGuard(()))
}

/// Puts back the settings saved by [`enter_raw_mode`], if any. Idempotent.
pub fn restore_now() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(original) = saved {
        let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSANOW, &original);
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore_now();
    }
}
