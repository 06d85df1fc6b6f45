// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! RLIMIT_NOFILE: every peer costs us one eventfd per vector (and the server
//! a socket more), so a process starts by raising its soft limit to the hard
//! one, and errors about running out say which limit and how to lift it.

use std::io;

fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`, which we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// Raises the soft fd limit to the hard one; returns the soft limit now.
pub fn raise_to_hard() -> u64 {
    let Some(mut lim) = get() else {
        return u64::MAX;
    };
    if lim.rlim_cur < lim.rlim_max {
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads `lim`; failure leaves the old limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return before;
        }
        log::debug!("fd limit raised from {before} to {}", lim.rlim_max);
    }
    lim.rlim_cur
}

/// The soft fd limit (`u64::MAX` if it cannot be read).
pub fn soft_limit() -> u64 {
    get().map_or(u64::MAX, |l| l.rlim_cur)
}

/// How many peers of `vectors` eventfds (plus `per_peer_extra`, a socket
/// for the server) fit in `limit` fds beside `reserve` for everything else.
pub fn peers_that_fit(limit: u64, vectors: u16, per_peer_extra: u64, reserve: u64) -> u64 {
    let per_peer = u64::from(vectors) + per_peer_extra;
    limit.saturating_sub(reserve) / per_peer.max(1)
}

/// For an error that may be "too many open files": the limit and the fix.
pub fn hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMFILE) => format!(
            " (this process holds as many fds as RLIMIT_NOFILE allows, {}: raise it with ulimit -n, or use fewer peers or vectors)",
            soft_limit()
        ),
        Some(libc::ENFILE) => " (the system-wide file table is full: see fs.file-max)".into(),
        _ => String::new(),
    }
}
