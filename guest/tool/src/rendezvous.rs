// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ping-pong rendezvous of docs/pingpong.md: how a ping and a pong find
//! each other in shared memory, whatever program each of them is (this
//! tool, the test guest, the host client, a shell script).
//!
//! Every record's magic word is written last (and cleared first), with
//! release/acquire ordering, so a reader that sees the magic sees the rest.
//! Both sides use fresh nonces, so leftovers of an earlier run never pair a
//! new ping with a stale pong.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::dev::Shm;
use crate::Error;

/// u32 "PONG", u32 pong's id, u64 pong's nonce, u64 ready (= ping's nonce).
pub const PONG: u64 = 0x000;
/// u32 "PING", u32 ping's id, u64 echo of pong's nonce, u64 ping's nonce.
pub const PING: u64 = 0x040;
/// u32 "DONE": ping finished all rounds.
pub const DONE: u64 = 0x0c0;
/// u64 ping's sequence number (poll mode).
pub const PING_SEQ: u64 = 0x100;
/// u64 pong's sequence number (poll mode).
pub const PONG_SEQ: u64 = 0x140;
/// Everything below this belongs to the rendezvous (the test guest's
/// MASK/RUNG words at 0x080 included); nothing else may use it.
pub const END: u64 = 0x200;

pub const MAGIC_PONG: u32 = u32::from_le_bytes(*b"PONG");
pub const MAGIC_PING: u32 = u32::from_le_bytes(*b"PING");
pub const MAGIC_DONE: u32 = u32::from_le_bytes(*b"DONE");

/// How long pairing sleeps between looks at the other side's record.
const PAIR_POLL: Duration = Duration::from_micros(200);

/// The rendezvous words, as atomics in the shared memory.
pub struct Block<'a> {
    pong_magic: &'a AtomicU32,
    pong_id: &'a AtomicU32,
    pong_nonce: &'a AtomicU64,
    pong_ready: &'a AtomicU64,
    ping_magic: &'a AtomicU32,
    ping_id: &'a AtomicU32,
    ping_echo: &'a AtomicU64,
    ping_nonce: &'a AtomicU64,
    done: &'a AtomicU32,
    pub ping_seq: &'a AtomicU64,
    pub pong_seq: &'a AtomicU64,
}

impl<'a> Block<'a> {
    pub fn new(shm: &'a Shm) -> Result<Self, Error> {
        if (shm.len() as u64) < END {
            return Err(Error::TooSmall(shm.len() as u64, END));
        }
        Ok(Block {
            pong_magic: shm.atomic32(PONG)?,
            pong_id: shm.atomic32(PONG + 4)?,
            pong_nonce: shm.atomic(PONG + 8)?,
            pong_ready: shm.atomic(PONG + 16)?,
            ping_magic: shm.atomic32(PING)?,
            ping_id: shm.atomic32(PING + 4)?,
            ping_echo: shm.atomic(PING + 8)?,
            ping_nonce: shm.atomic(PING + 16)?,
            done: shm.atomic32(DONE)?,
            ping_seq: shm.atomic(PING_SEQ)?,
            pong_seq: shm.atomic(PONG_SEQ)?,
        })
    }

    /// Pong, step 1: clear PONG, DONE and both sequence numbers, then
    /// publish our id and a fresh nonce (magic last). Returns the nonce.
    pub fn publish_pong(&self, me: u16) -> u64 {
        self.pong_magic.store(0, Ordering::SeqCst);
        self.done.store(0, Ordering::Relaxed);
        self.ping_seq.store(0, Ordering::Relaxed);
        self.pong_seq.store(0, Ordering::Relaxed);
        let nonce = fresh_nonce();
        self.pong_id.store(u32::from(me), Ordering::Relaxed);
        self.pong_nonce.store(nonce, Ordering::Relaxed);
        self.pong_ready.store(0, Ordering::Relaxed);
        self.pong_magic.store(MAGIC_PONG, Ordering::Release);
        nonce
    }

    /// Pong, step 3: once a PING echoes `nonce`, take ping's id and copy
    /// ping's nonce into ready. None while no such PING is there.
    pub fn answer_ping(&self, nonce: u64) -> Option<u32> {
        if self.ping_magic.load(Ordering::Acquire) != MAGIC_PING
            || self.ping_echo.load(Ordering::Acquire) != nonce
        {
            return None;
        }
        let id = self.ping_id.load(Ordering::Acquire);
        let theirs = self.ping_nonce.load(Ordering::Acquire);
        self.pong_ready.store(theirs, Ordering::Release);
        Some(id)
    }

    /// Pong: wait (at most `limit`) for a ping to pair with; its id.
    pub fn pair_as_pong(&self, me: u16, limit: Duration) -> Result<u16, Error> {
        let nonce = self.publish_pong(me);
        let id = poll_until(limit, || self.answer_ping(nonce))
            .ok_or(Error::Timeout(limit.as_secs(), "a ping to pair with"))?;
        peer_id(id)
    }

    /// Ping: wait (at most `limit`) for a pong to pair with; its id.
    pub fn pair_as_ping(&self, me: u16, limit: Duration) -> Result<u16, Error> {
        self.ping_magic.store(0, Ordering::SeqCst);
        let mut ping = PingSide::new(me);
        let id = poll_until(limit, || ping.step(self))
            .ok_or(Error::Timeout(limit.as_secs(), "a pong to pair with"))?;
        peer_id(id)
    }

    /// Ping, at the end: DONE, then withdraw our PING.
    pub fn finish_ping(&self) {
        self.done.store(MAGIC_DONE, Ordering::Release);
        self.ping_magic.store(0, Ordering::Release);
    }

    /// Whether ping wrote DONE.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Acquire) == MAGIC_DONE
    }

    /// Pong, at the end: withdraw our PONG.
    pub fn withdraw_pong(&self) {
        self.pong_magic.store(0, Ordering::Release);
    }
}

/// Ping's half of the pairing, one look at a time.
struct PingSide {
    me: u16,
    mine: u64,
    echoed: Option<u64>,
}

impl PingSide {
    fn new(me: u16) -> Self {
        PingSide {
            me,
            mine: fresh_nonce(),
            echoed: None,
        }
    }

    /// Steps 2 and 4: answer every new pong nonce with a fresh PING record;
    /// pong's id once it has copied our nonce into ready.
    fn step(&mut self, b: &Block) -> Option<u32> {
        if b.pong_magic.load(Ordering::Acquire) != MAGIC_PONG {
            return None;
        }
        let nonce = b.pong_nonce.load(Ordering::Acquire);
        if self.echoed != Some(nonce) {
            b.ping_magic.store(0, Ordering::SeqCst);
            b.ping_id.store(u32::from(self.me), Ordering::Relaxed);
            b.ping_echo.store(nonce, Ordering::Relaxed);
            b.ping_nonce.store(self.mine, Ordering::Relaxed);
            b.ping_magic.store(MAGIC_PING, Ordering::Release);
            self.echoed = Some(nonce);
            return None;
        }
        if b.pong_ready.load(Ordering::Acquire) == self.mine {
            return Some(b.pong_id.load(Ordering::Acquire));
        }
        None
    }
}

/// A nonce nobody used before: never 0 (the cleared value), different per
/// call and per VM (the TSC keeps counting; the address of a stack local
/// differs between processes with ASLR).
pub fn fresh_nonce() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let local = 0u8;
    let salt = (&local as *const u8 as u64).rotate_left(32);
    (tsc ^ salt) | 1
}

/// A peer id from shared memory: ids are 16 bits (the doorbell's peer field).
pub fn peer_id(raw: u32) -> Result<u16, Error> {
    u16::try_from(raw).map_err(|_| Error::BadPeer(u64::from(raw)))
}

/// Calls `look` until it returns Some, sleeping briefly in between; None
/// after `limit`.
fn poll_until<T>(limit: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = look() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(PAIR_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(5);

    #[test]
    fn offsets_are_the_documented_ones() {
        assert_eq!(
            (PONG, PING, DONE, PING_SEQ, PONG_SEQ),
            (0, 0x40, 0xc0, 0x100, 0x140)
        );
        // Magic words are the ASCII bytes in memory order.
        assert_eq!(MAGIC_PONG.to_le_bytes(), *b"PONG");
        assert_eq!(MAGIC_PONG, 0x474e_4f50);
        assert_eq!(MAGIC_PING, 0x474e_4950);
        assert_eq!(MAGIC_DONE, 0x454e_4f44);
    }

    #[test]
    fn pong_publishes_its_record_magic_last() {
        let shm = Shm::anonymous(4096);
        shm.write(PING_SEQ, 9).unwrap();
        shm.write(DONE, u64::from(MAGIC_DONE)).unwrap();
        let b = Block::new(&shm).unwrap();
        let nonce = b.publish_pong(7);
        assert_ne!(nonce, 0);
        assert_eq!(shm.read(PONG).unwrap(), u64::from(MAGIC_PONG) | (7 << 32));
        assert_eq!(shm.read(PONG + 8).unwrap(), nonce);
        assert_eq!(shm.read(PONG + 16).unwrap(), 0, "not ready yet");
        assert_eq!(shm.read(DONE).unwrap(), 0, "an old DONE is cleared");
        assert_eq!(shm.read(PING_SEQ).unwrap(), 0);
    }

    #[test]
    fn ping_and_pong_pair_and_learn_each_others_ids() {
        let shm = Shm::anonymous(4096);
        let b = Block::new(&shm).unwrap();
        let (pong, ping) = std::thread::scope(|s| {
            let pong = s.spawn(|| b.pair_as_pong(3, SEC));
            let ping = s.spawn(|| b.pair_as_ping(5, SEC));
            (pong.join().unwrap(), ping.join().unwrap())
        });
        assert_eq!(pong.unwrap(), 5);
        assert_eq!(ping.unwrap(), 3);
        // What a third party (the test guest, a script) reads back.
        assert_eq!(shm.read(PING).unwrap(), u64::from(MAGIC_PING) | (5 << 32));
        assert_eq!(shm.read(PING + 8).unwrap(), shm.read(PONG + 8).unwrap());
        assert_eq!(shm.read(PONG + 16).unwrap(), shm.read(PING + 16).unwrap());
    }

    #[test]
    fn a_stale_pong_record_does_not_pair_a_new_ping() {
        // A pong that crashed left its record, even "ready" for an old ping.
        let shm = Shm::anonymous(4096);
        let b = Block::new(&shm).unwrap();
        b.publish_pong(3);
        shm.write(PONG + 16, 0x1234_5679).unwrap();
        assert!(b.pair_as_ping(5, Duration::from_millis(50)).is_err());
        // Ping answered the stale nonce; a fresh pong then pairs with it.
        let (pong, ping) = std::thread::scope(|s| {
            let ping = s.spawn(|| b.pair_as_ping(5, SEC));
            std::thread::sleep(Duration::from_millis(20));
            let pong = s.spawn(|| b.pair_as_pong(4, SEC));
            (pong.join().unwrap(), ping.join().unwrap())
        });
        assert_eq!((pong.unwrap(), ping.unwrap()), (5, 4));
    }

    #[test]
    fn a_stale_ping_record_does_not_pair_a_new_pong() {
        let shm = Shm::anonymous(4096);
        let b = Block::new(&shm).unwrap();
        // A PING that echoes some other pong's nonce.
        shm.write(PING + 8, 0xdead_beef).unwrap();
        shm.write(PING, u64::from(MAGIC_PING) | (5 << 32)).unwrap();
        let err = b.pair_as_pong(3, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, Error::Timeout(..)), "{err}");
        assert_eq!(shm.read(PONG + 16).unwrap(), 0, "never marked ready");
    }

    #[test]
    fn ping_finishes_with_done_and_pong_withdraws() {
        let shm = Shm::anonymous(4096);
        let b = Block::new(&shm).unwrap();
        b.publish_pong(1);
        assert!(!b.done());
        b.finish_ping();
        assert!(b.done());
        assert_eq!(shm.read(PING).unwrap() as u32, 0, "PING withdrawn");
        b.withdraw_pong();
        assert_eq!(shm.read(PONG).unwrap() as u32, 0);
    }

    #[test]
    fn ids_in_shared_memory_must_be_16_bits() {
        assert_eq!(peer_id(65535).unwrap(), 65535);
        assert!(matches!(peer_id(65536), Err(Error::BadPeer(65536))));
    }

    #[test]
    fn nonces_are_fresh_and_never_zero() {
        let a = fresh_nonce();
        let b = fresh_nonce();
        assert_ne!(a, b);
        assert_eq!(a & 1, 1);
    }

    #[test]
    fn tiny_shared_memory_is_refused() {
        let shm = Shm::anonymous(256);
        assert!(matches!(Block::new(&shm), Err(Error::TooSmall(256, END))));
    }
}
