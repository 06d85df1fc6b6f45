// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Round trips between peers, with the rendezvous every ivvmm ping-pong
//! program speaks (docs/pingpong.md), so the client pairs with the test
//! guest, the Linux guest tool and another client alike:
//!
//! - pong publishes `{"PONG", id, nonce, ready}` at offset 0;
//! - ping answers `{"PING", id, echo of pong's nonce, its own nonce}` at 0x40;
//! - pong copies ping's nonce into `ready`; both now know each other's id;
//! - rounds: ping rings pong's vector, pong rings back; at the end ping
//!   writes `"DONE"` at 0xc0. Magic words are written last and cleared first.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::{take, wait_any, Client, ClientError};

/// `{"PONG", u32 id, u64 nonce, u64 ready}`.
pub const PONG_OFFSET: usize = 0x000;
/// `{"PING", u32 id, u64 echo of pong's nonce, u64 nonce}`.
pub const PING_OFFSET: usize = 0x040;
/// `"DONE"`: the pinger finished.
pub const DONE_OFFSET: usize = 0x0c0;
/// Poll-mode sequence numbers (cleared by a new pong).
const PING_SEQ_OFFSET: usize = 0x100;
const PONG_SEQ_OFFSET: usize = 0x140;
pub const PONG_MAGIC: [u8; 4] = *b"PONG";
pub const PING_MAGIC: [u8; 4] = *b"PING";
pub const DONE_MAGIC: [u8; 4] = *b"DONE";
/// How often a waiting side looks at shared memory.
const POLL_STEP: Duration = Duration::from_micros(200);

/// How a pinger waits for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Sleep in poll(2) (what a VMM's host thread would do).
    Poll,
    /// Spin on a non-blocking read (lowest latency, burns a core).
    Spin,
}

/// Round-trip times of one ping run.
#[derive(Debug, Clone)]
pub struct PingStats {
    pub peer: u16,
    pub vector: u16,
    /// Sorted round-trip times.
    pub samples: Vec<Duration>,
}

impl PingStats {
    /// The `pct`-th percentile (nearest rank), e.g. 50, 90, 99.
    pub fn percentile(&self, pct: u32) -> Duration {
        percentile(&self.samples, pct)
    }

    /// `ping peer=1 vector=0 count=100 p50=12.3us p90=... p99=... max=...`
    pub fn summary(&self) -> String {
        let us = |d: Duration| format!("{:.1}us", d.as_secs_f64() * 1e6);
        format!(
            "ping peer={} vector={} count={} p50={} p90={} p99={} max={}",
            self.peer,
            self.vector,
            self.samples.len(),
            us(self.percentile(50)),
            us(self.percentile(90)),
            us(self.percentile(99)),
            us(self.samples.last().copied().unwrap_or_default()),
        )
    }
}

/// Nearest-rank percentile of sorted `samples` (zero when empty).
pub fn percentile(samples: &[Duration], pct: u32) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let n = samples.len();
    let rank = (n * pct.min(100) as usize).div_ceil(100).max(1);
    samples[rank - 1]
}

fn magic_word(magic: [u8; 4]) -> u32 {
    u32::from_le_bytes(magic)
}

/// A fresh nonce: never 0 (0 means "none yet").
fn nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (t ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

impl Client {
    fn read_u32_at(&self, offset: usize) -> u32 {
        self.memory().read_u32(offset).unwrap_or(0)
    }

    fn write_u32_at(&self, offset: usize, value: u32) {
        let _ = self.memory().write_u32(offset, value);
    }

    fn read_u64_at(&self, offset: usize) -> u64 {
        let mut b = [0u8; 8];
        match self.memory().read(offset, &mut b) {
            Some(()) => u64::from_le_bytes(b),
            None => 0,
        }
    }

    fn write_u64_at(&self, offset: usize, value: u64) {
        let _ = self.memory().write(offset, &value.to_le_bytes());
    }

    /// Ping's half of the pairing: answers the (newest) pong's nonce until
    /// that pong confirms ours; returns the pong's id.
    fn pair_with_pong(
        &self,
        deadline: Instant,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<u16, ClientError> {
        let me = u32::from(self.id());
        let mine = nonce();
        let mut echoed = 0u64;
        loop {
            if self.read_u32_at(PONG_OFFSET) == magic_word(PONG_MAGIC) {
                let theirs = self.read_u64_at(PONG_OFFSET + 8);
                if theirs != echoed {
                    self.write_u32_at(PING_OFFSET, 0);
                    self.write_u32_at(PING_OFFSET + 4, me);
                    self.write_u64_at(PING_OFFSET + 8, theirs);
                    self.write_u64_at(PING_OFFSET + 16, mine);
                    self.write_u32_at(PING_OFFSET, magic_word(PING_MAGIC));
                    echoed = theirs;
                } else if self.read_u64_at(PONG_OFFSET + 16) == mine {
                    let id = self.read_u32_at(PONG_OFFSET + 4);
                    return u16::try_from(id)
                        .map_err(|_| ClientError::NoPong { found: PONG_MAGIC });
                }
            }
            if Instant::now() >= deadline {
                let mut found = [0u8; 4];
                let _ = self.memory().read(PONG_OFFSET, &mut found);
                return Err(ClientError::NoPong { found });
            }
            pause(POLL_STEP, stop)?;
        }
    }

    /// Pong's half: publishes a fresh record and waits for a ping that
    /// echoes it; returns the pinger's id, or None when `stop` fired.
    fn pair_with_ping(&self, stop: Option<BorrowedFd<'_>>) -> Result<Option<u16>, ClientError> {
        let mine = nonce();
        self.write_u32_at(PONG_OFFSET, 0);
        self.write_u32_at(DONE_OFFSET, 0);
        self.write_u64_at(PING_SEQ_OFFSET, 0);
        self.write_u64_at(PONG_SEQ_OFFSET, 0);
        self.write_u32_at(PONG_OFFSET + 4, u32::from(self.id()));
        self.write_u64_at(PONG_OFFSET + 8, mine);
        self.write_u64_at(PONG_OFFSET + 16, 0);
        self.write_u32_at(PONG_OFFSET, magic_word(PONG_MAGIC));
        loop {
            if self.read_u32_at(PING_OFFSET) == magic_word(PING_MAGIC)
                && self.read_u64_at(PING_OFFSET + 8) == mine
            {
                let id = self.read_u32_at(PING_OFFSET + 4);
                self.write_u64_at(PONG_OFFSET + 16, self.read_u64_at(PING_OFFSET + 16));
                if let Ok(id) = u16::try_from(id) {
                    return Ok(Some(id));
                }
            }
            if pause(POLL_STEP, stop).is_err() {
                return Ok(None);
            }
        }
    }
}

/// Sleeps `step`, or returns Interrupted at once if `stop` is readable.
fn pause(step: Duration, stop: Option<BorrowedFd<'_>>) -> Result<(), ClientError> {
    match stop {
        Some(fd) => {
            if wait_any(&[Some(fd)], Some(step))?[0] {
                return Err(ClientError::Interrupted);
            }
        }
        None => std::thread::sleep(step),
    }
    Ok(())
}

impl Client {
    /// Pings `peer` (or the pong found in memory) `count` times on `vector`,
    /// waiting at most `timeout` per round.
    pub fn ping(
        &mut self,
        peer: Option<u16>,
        count: u64,
        vector: u16,
        timeout: Duration,
        mode: WaitMode,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<PingStats, ClientError> {
        self.own_fd(vector)?;
        let pong = self.pair_with_pong(crate::protocol::deadline_after(timeout), stop)?;
        if let Some(p) = peer.filter(|p| *p != pong) {
            log::warn!(
                "--peer {p} given but the pong in shared memory is peer {pong}; pinging {pong}"
            );
        }
        let peer = pong;
        self.update();
        self.peer_fd(peer, vector)?;
        let own = self.own_fd(vector)?;
        let _ = take(own)?; // stale events from before we started
        let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for round in 0..count {
            let start = Instant::now();
            let deadline = crate::protocol::deadline_after(timeout);
            self.ring(peer, vector)?;
            let answered = match mode {
                WaitMode::Spin => self.spin(vector, deadline)?,
                WaitMode::Poll => self.poll_answer(vector, deadline, stop)?,
            };
            if !answered {
                return Err(ClientError::NoAnswer {
                    round,
                    peer,
                    vector,
                    after: timeout,
                });
            }
            samples.push(start.elapsed());
        }
        self.write_u32_at(DONE_OFFSET, magic_word(DONE_MAGIC));
        self.write_u32_at(PING_OFFSET, 0);
        samples.sort();
        Ok(PingStats {
            peer,
            vector,
            samples,
        })
    }

    fn spin(&self, vector: u16, deadline: Instant) -> Result<bool, ClientError> {
        let own = self.own_fd(vector)?;
        loop {
            if take(own)?.is_some() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    fn poll_answer(
        &self,
        vector: u16,
        deadline: Instant,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<bool, ClientError> {
        let own = self.own_fd(vector)?;
        loop {
            if take(own)?.is_some() {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // SAFETY: `own` outlives this borrow, used only by poll.
            let fd = unsafe { BorrowedFd::borrow_raw(own.as_raw_fd()) };
            if wait_any(&[Some(fd), stop], Some(left))?[1] {
                return Err(ClientError::Interrupted);
            }
        }
    }

    /// Publishes our pong record and answers pingers on `vector`, one
    /// after another, until `stop` is readable; returns the answers given.
    pub fn pong(
        &mut self,
        vector: u16,
        stop: Option<BorrowedFd<'_>>,
        out: &mut dyn Write,
    ) -> Result<u64, ClientError> {
        self.own_fd(vector)?;
        let me = self.id();
        writeln!(out, "pong id={me} vector={vector} ready")?;
        out.flush()?;
        let mut answered = 0;
        let mut limit = crate::protocol::ratelimit::RateLimit::new();
        loop {
            let Some(pinger) = self.pair_with_ping(stop)? else {
                return Ok(answered);
            };
            let _ = take(self.own_fd(vector)?)?; // stale events
            while self.read_u32_at(DONE_OFFSET) != magic_word(DONE_MAGIC) {
                let own = self.own_fd(vector)?;
                if take(own)?.is_none() {
                    // SAFETY: `own` outlives this borrow, used only by poll.
                    let fd = unsafe { BorrowedFd::borrow_raw(own.as_raw_fd()) };
                    let conn = (!self.conn.is_gone()).then(|| self.conn.as_fd());
                    // Wake now and then to notice DONE.
                    let ready = wait_any(&[Some(fd), conn, stop], Some(Duration::from_millis(10)))?;
                    if ready[2] {
                        return Ok(answered);
                    }
                    if ready[1] {
                        self.update();
                    }
                    continue;
                }
                match self.ring(pinger, vector) {
                    Ok(()) => answered += 1,
                    Err(e) => {
                        if limit.allow() {
                            log::warn!("cannot answer peer {pinger}: {e}");
                        }
                    }
                }
            }
            writeln!(out, "pong peer={pinger} done answered={answered}")?;
            out.flush()?;
            self.write_u32_at(PONG_OFFSET, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&x| Duration::from_micros(x)).collect()
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = us(&(1..=100).collect::<Vec<_>>());
        assert_eq!(percentile(&s, 50), Duration::from_micros(50));
        assert_eq!(percentile(&s, 90), Duration::from_micros(90));
        assert_eq!(percentile(&s, 99), Duration::from_micros(99));
        assert_eq!(percentile(&s, 100), Duration::from_micros(100));
        let three = us(&[1, 2, 3]);
        assert_eq!(percentile(&three, 50), Duration::from_micros(2));
        assert_eq!(percentile(&three, 99), Duration::from_micros(3));
        assert_eq!(percentile(&us(&[7]), 50), Duration::from_micros(7));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn magics_are_the_ascii_bytes_in_memory_order() {
        assert_eq!(magic_word(PONG_MAGIC).to_le_bytes(), *b"PONG");
        assert_eq!(magic_word(DONE_MAGIC), u32::from_le_bytes(*b"DONE"));
    }

    #[test]
    fn nonces_are_never_zero_and_change() {
        let a = nonce();
        std::thread::sleep(Duration::from_micros(10));
        assert_ne!(a, 0);
        assert_ne!(a, nonce());
    }
}
