// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm ping` / `ivshm pong`: doorbell round trips between two VMs.
//!
//! A control block in shared memory (at [`CTRL`], clear of the offsets
//! `check --host` uses) lets the two find each other: pong publishes its
//! position and a ready magic; ping publishes its own position, then each
//! round rings pong's vector and waits for pong to ring back (through the
//! wait ioctl, or with `--epoll` through epoll + read). With `--poll` both
//! spin on sequence numbers in shared memory instead of interrupts.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::args::{Mode, PingOpts};
use crate::dev::{Device, Shm, Wait};
use crate::stats::Percentiles;
use crate::Error;

/// Control block: one 64-byte line per field, so the two sides' writes
/// do not share cache lines.
pub const CTRL: u64 = 0x2000;
const MAGIC: u64 = CTRL;
const PONG_POS: u64 = CTRL + 64;
const PING_POS: u64 = CTRL + 128;
const PING_SEQ: u64 = CTRL + 192;
const PONG_SEQ: u64 = CTRL + 256;
const STOP: u64 = CTRL + 320;
pub const CTRL_END: u64 = CTRL + 384;
pub const READY: u64 = u64::from_le_bytes(*b"IVSHMPNG");
// `check --host` owns everything below MIN_HOST_CHECK_SIZE.
const _: () = assert!(CTRL >= crate::check::MIN_HOST_CHECK_SIZE);

/// How often a spinning loop looks at the clock.
const SPINS_PER_CLOCK_CHECK: u32 = 1 << 12;

struct Ctrl<'a> {
    magic: &'a AtomicU64,
    pong_pos: &'a AtomicU64,
    ping_pos: &'a AtomicU64,
    ping_seq: &'a AtomicU64,
    pong_seq: &'a AtomicU64,
    stop: &'a AtomicU64,
}

impl<'a> Ctrl<'a> {
    fn new(shm: &'a Shm) -> Result<Self, Error> {
        if (shm.len() as u64) < CTRL_END {
            return Err(Error::TooSmall(shm.len() as u64, CTRL_END));
        }
        Ok(Ctrl {
            magic: shm.atomic(MAGIC)?,
            pong_pos: shm.atomic(PONG_POS)?,
            ping_pos: shm.atomic(PING_POS)?,
            ping_seq: shm.atomic(PING_SEQ)?,
            pong_seq: shm.atomic(PONG_SEQ)?,
            stop: shm.atomic(STOP)?,
        })
    }
}

/// Waits for one vector's count to move, the way the mode asks.
enum Waiter<'d> {
    Ioctl(&'d Device),
    Epoll {
        dev: &'d Device,
        epoll: OwnedFd,
        counts: Vec<u64>,
    },
}

impl<'d> Waiter<'d> {
    fn new(dev: &'d Device, mode: Mode, vectors: u32) -> Result<Self, Error> {
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
    fn wait(&mut self, vector: u32, seen: u64, timeout_ms: i32) -> Result<Wait, Error> {
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

fn need_vector(dev: &Device, vectors: u32, vector: u16) -> Result<(), Error> {
    if u32::from(vector) >= vectors {
        return Err(Error::NoVector(dev.path().to_string(), vectors, vector));
    }
    Ok(())
}

fn peer_id(raw: u64) -> Result<u16, Error> {
    u16::try_from(raw).map_err(|_| Error::BadPeer(raw))
}

pub struct PingResult {
    pub peer: u16,
    pub stats: Percentiles,
}

pub fn ping(dev: &Device, opts: &PingOpts) -> Result<PingResult, Error> {
    let info = dev.info()?;
    let poll = opts.mode == Mode::Poll;
    if !poll {
        need_vector(dev, info.vectors, opts.vector)?;
    }
    let mut waiter = Waiter::new(dev, opts.mode, info.vectors)?;
    let shm = dev.map(info.size)?;
    let ctrl = Ctrl::new(&shm)?;
    let timeout = Duration::from_secs(opts.timeout_s);
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);

    let start = Instant::now();
    while ctrl.magic.load(Ordering::Acquire) != READY {
        if start.elapsed() > timeout {
            return Err(Error::Timeout(opts.timeout_s, "pong to become ready"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let peer = match opts.peer {
        Some(p) => p,
        None => peer_id(ctrl.pong_pos.load(Ordering::Acquire))?,
    };
    ctrl.ping_pos
        .store(u64::try_from(info.position).unwrap_or(0), Ordering::Release);
    let mut seen = if poll {
        0
    } else {
        dev.count(u32::from(opts.vector))?
    };

    let mut samples = Vec::with_capacity(opts.count.min(1 << 20) as usize);
    for round in 1..=opts.count {
        let t0 = Instant::now();
        if poll {
            ctrl.ping_seq.store(round, Ordering::Release);
            spin_until(timeout, || ctrl.pong_seq.load(Ordering::Acquire) == round)
                .map_err(|_| Error::NoReply(round))?;
        } else {
            dev.ring(peer, opts.vector)?;
            match waiter.wait(u32::from(opts.vector), seen, timeout_ms)? {
                Wait::Event(c) => seen = c,
                Wait::Timeout(_) => return Err(Error::NoReply(round)),
            }
        }
        samples.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }

    ctrl.stop.store(1, Ordering::Release);
    ctrl.magic.store(0, Ordering::Release);
    if !poll {
        dev.ring(peer, opts.vector)?; // wake pong to see `stop`
    }
    let stats = Percentiles::of(&mut samples).ok_or(Error::NoReply(0))?;
    Ok(PingResult { peer, stats })
}

/// Answer pings until ping sets `stop`; returns the rounds answered.
pub fn pong(dev: &Device, opts: &PingOpts) -> Result<u64, Error> {
    let info = dev.info()?;
    let poll = opts.mode == Mode::Poll;
    if !poll {
        need_vector(dev, info.vectors, opts.vector)?;
    }
    let mut waiter = Waiter::new(dev, opts.mode, info.vectors)?;
    let shm = dev.map(info.size)?;
    let ctrl = Ctrl::new(&shm)?;
    let idle_limit = Duration::from_secs(opts.timeout_s);
    let vector = u32::from(opts.vector);

    ctrl.stop.store(0, Ordering::Relaxed);
    ctrl.ping_seq.store(0, Ordering::Relaxed);
    ctrl.pong_seq.store(0, Ordering::Relaxed);
    ctrl.pong_pos
        .store(u64::try_from(info.position).unwrap_or(0), Ordering::Relaxed);
    let mut seen = if poll { 0 } else { dev.count(vector)? };
    ctrl.magic.store(READY, Ordering::Release);

    let mut rounds = 0;
    let mut last_activity = Instant::now();
    loop {
        if poll {
            let mut seq = 0;
            let r = spin_until(Duration::from_millis(100), || {
                seq = ctrl.ping_seq.load(Ordering::Acquire);
                seq != rounds || ctrl.stop.load(Ordering::Acquire) != 0
            });
            if r.is_ok() && seq != rounds {
                ctrl.pong_seq.store(seq, Ordering::Release);
                rounds = seq;
                last_activity = Instant::now();
            }
        } else if let Wait::Event(c) = waiter.wait(vector, seen, 100)? {
            seen = c;
            if ctrl.stop.load(Ordering::Acquire) != 0 {
                break;
            }
            dev.ring(peer_id(ctrl.ping_pos.load(Ordering::Acquire))?, opts.vector)?;
            rounds += 1;
            last_activity = Instant::now();
        }
        if ctrl.stop.load(Ordering::Acquire) != 0 {
            break;
        }
        if last_activity.elapsed() > idle_limit {
            return Err(Error::Timeout(opts.timeout_s, "a ping"));
        }
    }
    Ok(rounds)
}

/// Spin (in user mode: never a syscall) until `done`, or fail after `limit`.
fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    loop {
        for _ in 0..SPINS_PER_CLOCK_CHECK {
            if done() {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        if start.elapsed() > limit {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{guest_offsets, host_offsets};

    #[test]
    fn control_block_avoids_the_check_offsets() {
        for size in [16384u64, 1 << 20, 4 << 20] {
            for off in host_offsets(size).into_iter().chain(guest_offsets(size)) {
                assert!(off + 8 <= CTRL || off >= CTRL_END, "size {size}, off {off}");
            }
        }
    }

    #[test]
    fn fields_have_their_own_cache_lines() {
        let offs = [MAGIC, PONG_POS, PING_POS, PING_SEQ, PONG_SEQ, STOP];
        for w in offs.windows(2) {
            assert_eq!(w[1] - w[0], 64);
        }
        assert_eq!(CTRL_END, STOP + 64);
    }

    #[test]
    fn peer_ids_are_16_bits() {
        assert_eq!(peer_id(65535).unwrap(), 65535);
        assert!(matches!(peer_id(65536), Err(Error::BadPeer(65536))));
    }

    #[test]
    fn spin_until_times_out_and_succeeds() {
        assert!(spin_until(Duration::from_millis(1), || false).is_err());
        let mut n = 0;
        assert!(spin_until(Duration::from_secs(5), || {
            n += 1;
            n > 10
        })
        .is_ok());
    }
}
