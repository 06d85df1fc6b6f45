// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm ping` / `ivshm pong`: doorbell round trips with any partner that
//! speaks docs/pingpong.md (this tool in another VM, the test guest, the
//! host client).
//!
//! The two pair up through the rendezvous block ([`crate::rendezvous`]).
//! Then, per round, ping rings `(pong << 16) | V` and waits for its own
//! vector V (through the wait ioctl, or with `--epoll` through epoll +
//! read); pong waits for V and rings `(ping << 16) | V` back. With `--poll`
//! both spin on the sequence numbers instead and no doorbell is rung. Ping
//! ends with DONE; pong answers until it sees DONE. Neither rings anything
//! beyond the rounds (a test-guest pong counts every interrupt).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::args::{Mode, PingOpts};
use crate::dev::{Device, Wait};
use crate::rendezvous::{peer_id, Block};
use crate::stats::Percentiles;
use crate::waiter::Waiter;
use crate::Error;

/// How often a spinning loop looks at the clock.
const SPINS_PER_CLOCK_CHECK: u32 = 1 << 12;
/// How long pong waits for a doorbell before it looks for DONE again.
const DONE_CHECK_MS: i32 = 20;

/// One doorbell vector: ring it at a peer, wait for it here.
pub trait Bell {
    /// Ring our vector at `peer`.
    fn ring(&mut self, peer: u16) -> Result<(), Error>;
    /// Our vector's event count now.
    fn count(&mut self) -> Result<u64, Error>;
    /// Until our vector's count differs from `seen`, at most `timeout_ms`.
    fn wait(&mut self, seen: u64, timeout_ms: i32) -> Result<Wait, Error>;
}

struct DevBell<'d> {
    dev: &'d Device,
    vector: u16,
    waiter: Waiter<'d>,
}

impl Bell for DevBell<'_> {
    fn ring(&mut self, peer: u16) -> Result<(), Error> {
        self.dev.ring(peer, self.vector)
    }
    fn count(&mut self) -> Result<u64, Error> {
        self.dev.count(u32::from(self.vector))
    }
    fn wait(&mut self, seen: u64, timeout_ms: i32) -> Result<Wait, Error> {
        self.waiter.wait(u32::from(self.vector), seen, timeout_ms)
    }
}

pub struct PingResult {
    pub peer: u16,
    pub stats: Percentiles,
}

pub struct PongResult {
    pub peer: u16,
    pub rounds: u64,
}

/// The device's bell for `opts` (None in poll mode), our id and the mapping.
fn setup<'d>(
    dev: &'d Device,
    opts: &PingOpts,
) -> Result<(Option<DevBell<'d>>, u16, crate::dev::Shm), Error> {
    let info = dev.info()?;
    let me = u32::try_from(info.position)
        .map_err(|_| Error::BadPeer(info.position as u64))
        .and_then(peer_id)?;
    let bell = if opts.mode == Mode::Poll {
        None
    } else {
        if u32::from(opts.vector) >= info.vectors {
            return Err(Error::NoVector(
                dev.path().to_string(),
                info.vectors,
                opts.vector,
            ));
        }
        Some(DevBell {
            dev,
            vector: opts.vector,
            waiter: Waiter::new(dev, opts.mode, info.vectors)?,
        })
    };
    Ok((bell, me, dev.map(info.size)?))
}

pub fn ping(dev: &Device, opts: &PingOpts) -> Result<PingResult, Error> {
    let (mut bell, me, shm) = setup(dev, opts)?;
    let block = Block::new(&shm)?;
    run_ping(&block, me, bell.as_mut().map(|b| b as &mut dyn Bell), opts)
}

pub fn pong(dev: &Device, opts: &PingOpts) -> Result<PongResult, Error> {
    let (mut bell, me, shm) = setup(dev, opts)?;
    let block = Block::new(&shm)?;
    run_pong(&block, me, bell.as_mut().map(|b| b as &mut dyn Bell), opts)
}

/// Ping: pair, `opts.count` rounds, DONE. `bell` None means poll mode.
pub fn run_ping(
    block: &Block,
    me: u16,
    mut bell: Option<&mut dyn Bell>,
    opts: &PingOpts,
) -> Result<PingResult, Error> {
    let timeout = Duration::from_secs(opts.timeout_s);
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    let pong = block.pair_as_ping(me, timeout)?;
    let peer = opts.peer.unwrap_or(pong);
    let mut seen = match bell.as_mut() {
        Some(b) => b.count()?,
        None => 0,
    };

    let mut samples = Vec::with_capacity(opts.count.min(1 << 20) as usize);
    for round in 1..=opts.count {
        let t0 = Instant::now();
        match bell.as_mut() {
            Some(b) => {
                b.ring(peer)?;
                match b.wait(seen, timeout_ms)? {
                    Wait::Event(c) => seen = c,
                    Wait::Timeout(_) => return Err(Error::NoReply(round)),
                }
            }
            None => {
                block.ping_seq.store(round, Ordering::Release);
                spin_until(timeout, || block.pong_seq.load(Ordering::Acquire) == round)
                    .map_err(|_| Error::NoReply(round))?;
            }
        }
        samples.push(u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    block.finish_ping();
    let stats = Percentiles::of(&mut samples).ok_or(Error::NoReply(0))?;
    Ok(PingResult { peer, stats })
}

/// Pong: pair, answer until DONE. `bell` None means poll mode. Gives up
/// after `opts.timeout_s` without a ping (pairing or between rounds).
pub fn run_pong(
    block: &Block,
    me: u16,
    mut bell: Option<&mut dyn Bell>,
    opts: &PingOpts,
) -> Result<PongResult, Error> {
    let idle_limit = Duration::from_secs(opts.timeout_s);
    // The count before pairing: ping may ring as soon as we are ready.
    let mut seen = match bell.as_mut() {
        Some(b) => b.count()?,
        None => 0,
    };
    let peer = block.pair_as_pong(me, idle_limit)?;

    let mut rounds = 0;
    let mut last_activity = Instant::now();
    while !block.done() {
        match bell.as_mut() {
            Some(b) => {
                if let Wait::Event(c) = b.wait(seen, DONE_CHECK_MS)? {
                    seen = c;
                    b.ring(peer)?;
                    rounds += 1;
                    last_activity = Instant::now();
                }
            }
            None => {
                let mut seq = rounds;
                let limit = Duration::from_millis(DONE_CHECK_MS as u64);
                let moved = spin_until(limit, || {
                    seq = block.ping_seq.load(Ordering::Acquire);
                    seq != rounds || block.done()
                });
                if moved.is_ok() && seq != rounds {
                    block.pong_seq.store(seq, Ordering::Release);
                    rounds = seq;
                    last_activity = Instant::now();
                }
            }
        }
        if last_activity.elapsed() > idle_limit {
            return Err(Error::Timeout(opts.timeout_s, "the next ping"));
        }
    }
    block.withdraw_pong();
    Ok(PongResult { peer, rounds })
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
    use crate::dev::Shm;
    use std::collections::BTreeMap;
    use std::sync::{Condvar, Mutex};

    /// Doorbells between threads: a count per peer id.
    #[derive(Default)]
    struct Hub {
        counts: Mutex<BTreeMap<u16, u64>>,
        rung: Condvar,
    }

    struct TestBell<'h> {
        hub: &'h Hub,
        me: u16,
    }

    impl Bell for TestBell<'_> {
        fn ring(&mut self, peer: u16) -> Result<(), Error> {
            *self.hub.counts.lock().unwrap().entry(peer).or_default() += 1;
            self.hub.rung.notify_all();
            Ok(())
        }
        fn count(&mut self) -> Result<u64, Error> {
            Ok(*self.hub.counts.lock().unwrap().entry(self.me).or_default())
        }
        fn wait(&mut self, seen: u64, timeout_ms: i32) -> Result<Wait, Error> {
            let counts = self.hub.counts.lock().unwrap();
            let limit = Duration::from_millis(timeout_ms as u64);
            let (mut counts, _) = self
                .hub
                .rung
                .wait_timeout_while(counts, limit, |c| {
                    c.get(&self.me).copied().unwrap_or(0) == seen
                })
                .unwrap();
            let now = *counts.entry(self.me).or_default();
            Ok(if now == seen {
                Wait::Timeout(now)
            } else {
                Wait::Event(now)
            })
        }
    }

    fn opts(count: u64, mode: Mode) -> PingOpts {
        PingOpts {
            count,
            mode,
            timeout_s: 5,
            ..PingOpts::default()
        }
    }

    /// Pong (id 2) and ping (id 9) in two threads on one block.
    fn play(mode: Mode, count: u64, hub: &Hub) -> (PingResult, PongResult) {
        let shm = Shm::anonymous(4096);
        let block = Block::new(&shm).unwrap();
        let o = opts(count, mode);
        let irq = mode != Mode::Poll;
        std::thread::scope(|s| {
            let pong = s.spawn(|| {
                let mut bell = TestBell { hub, me: 2 };
                let bell = irq.then_some(&mut bell as &mut dyn Bell);
                run_pong(&block, 2, bell, &o)
            });
            let ping = s.spawn(|| {
                let mut bell = TestBell { hub, me: 9 };
                let bell = irq.then_some(&mut bell as &mut dyn Bell);
                run_ping(&block, 9, bell, &o)
            });
            (ping.join().unwrap().unwrap(), pong.join().unwrap().unwrap())
        })
    }

    #[test]
    fn doorbell_rounds_ring_each_side_exactly_once_per_round() {
        let hub = Hub::default();
        let (ping, pong) = play(Mode::Irq, 100, &hub);
        assert_eq!((ping.peer, pong.peer), (2, 9));
        assert_eq!(pong.rounds, 100);
        assert!(ping.stats.p50 > 0 && ping.stats.p50 <= ping.stats.max);
        // No extra "wake up and stop" doorbell: DONE is in shared memory.
        let counts = hub.counts.lock().unwrap();
        assert_eq!(counts.get(&2), Some(&100), "pong was rung once per round");
        assert_eq!(counts.get(&9), Some(&100), "ping was rung once per round");
    }

    #[test]
    fn poll_rounds_use_sequence_numbers_and_no_doorbell() {
        let hub = Hub::default();
        let (ping, pong) = play(Mode::Poll, 1000, &hub);
        assert_eq!((ping.peer, pong.peer, pong.rounds), (2, 9, 1000));
        assert!(hub.counts.lock().unwrap().is_empty(), "nobody rang");
    }

    #[test]
    fn a_second_pair_on_the_same_block_starts_afresh() {
        // Like `ivshm pong && ivshm pong --poll` against two pings in turn.
        let hub = Hub::default();
        play(Mode::Irq, 10, &hub);
        let (_, pong) = play(Mode::Poll, 10, &hub);
        assert_eq!(pong.rounds, 10);
    }

    #[test]
    fn ping_without_a_pong_times_out() {
        let shm = Shm::anonymous(4096);
        let block = Block::new(&shm).unwrap();
        let o = PingOpts {
            timeout_s: 0,
            ..opts(1, Mode::Poll)
        };
        assert!(matches!(
            run_ping(&block, 1, None, &o),
            Err(Error::Timeout(0, _))
        ));
    }

    #[test]
    fn ping_whose_pong_stops_answering_reports_the_round() {
        let shm = Shm::anonymous(4096);
        let block = Block::new(&shm).unwrap();
        let hub = Hub::default();
        let o = PingOpts {
            timeout_s: 1,
            ..opts(5, Mode::Irq)
        };
        // A pong that pairs and then never rings back.
        let r = std::thread::scope(|s| {
            s.spawn(|| block.pair_as_pong(2, Duration::from_secs(5)));
            let mut bell = TestBell { hub: &hub, me: 9 };
            run_ping(&block, 9, Some(&mut bell), &o)
        });
        assert!(matches!(r, Err(Error::NoReply(1))));
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
