// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Waiting for one vector's event count to move: through the driver's wait
//! ioctl, or (`--epoll`) through epoll + read of the counts.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::args::Mode;
use crate::dev::{Device, Wait};
use crate::Error;

pub enum Waiter<'d> {
    Ioctl(&'d Device),
    Epoll {
        dev: &'d Device,
        epoll: OwnedFd,
        counts: Vec<u64>,
    },
}

impl<'d> Waiter<'d> {
    pub fn new(dev: &'d Device, mode: Mode, vectors: u32) -> Result<Self, Error> {
        if mode != Mode::Epoll {
            return Ok(Waiter::Ioctl(dev));
        }
        let epoll_err = |e| Error::Epoll(dev.path().to_string(), e);
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(epoll_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh epoll descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 0,
        };
        // SAFETY: both descriptors are open; `ev` is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                dev.raw_fd(),
                &mut ev,
            )
        };
        if rc < 0 {
            return Err(epoll_err(io::Error::last_os_error()));
        }
        Ok(Waiter::Epoll {
            dev,
            epoll,
            counts: vec![0; vectors as usize],
        })
    }

    /// Until `vector`'s count differs from `seen`, at most `timeout_ms`.
    pub fn wait(&mut self, vector: u32, seen: u64, timeout_ms: i32) -> Result<Wait, Error> {
        let (dev, epoll, counts) = match self {
            Waiter::Ioctl(dev) => return dev.wait(vector, seen, timeout_ms),
            Waiter::Epoll { dev, epoll, counts } => (dev, epoll, counts),
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(0) as u64);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let left_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `epoll` is open and `ev` has room for the one event asked for.
            let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut ev, 1, left_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(Error::Epoll(dev.path().to_string(), e));
                }
            } else if n > 0 {
                dev.read_counts(counts)?;
                let now = counts.get(vector as usize).copied().unwrap_or(seen);
                if now != seen {
                    return Ok(Wait::Event(now));
                }
            }
            if Instant::now() >= deadline {
                return Ok(Wait::Timeout(seen));
            }
        }
    }
}
