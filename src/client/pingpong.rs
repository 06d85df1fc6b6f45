// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Round trips between peers, with the rendezvous the test guest uses:
//!
//! - pong writes `"PONG"` + its id (u32 LE) at shared-memory offset 0, then
//!   answers every ring on its vector by ringing back the id found in the
//!   `"PING"` record at offset 64;
//! - a pinger writes `"PING"` + its own id at offset 64 before ringing, and
//!   finds the pong's id at offset 0 unless told (`--peer`).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::{take, wait_any, Client, ClientError};

/// Offset of the pong's `{"PONG", id}` record.
pub const PONG_OFFSET: usize = 0;
/// Offset of the pinger's `{"PING", id}` record.
pub const PING_OFFSET: usize = 64;
pub const PONG_MAGIC: [u8; 4] = *b"PONG";
pub const PING_MAGIC: [u8; 4] = *b"PING";

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

fn record(magic: [u8; 4], id: u16) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&magic);
    r[4..].copy_from_slice(&u32::from(id).to_le_bytes());
    r
}

/// Reads a `{magic, id}` record: the magic, and the id if it is sane.
fn read_record(client: &Client, offset: usize) -> ([u8; 4], Option<u16>) {
    let mut r = [0u8; 8];
    if client.memory().read(offset, &mut r).is_none() {
        return ([0; 4], None);
    }
    let magic = [r[0], r[1], r[2], r[3]];
    let id = u32::from_le_bytes([r[4], r[5], r[6], r[7]]);
    (magic, u16::try_from(id).ok())
}

impl Client {
    /// The pong's id from its record at offset 0.
    pub fn find_pong(&self) -> Result<u16, ClientError> {
        match read_record(self, PONG_OFFSET) {
            (PONG_MAGIC, Some(id)) => Ok(id),
            (found, _) => Err(ClientError::NoPong { found }),
        }
    }

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
        let peer = match peer {
            Some(p) => p,
            None => self.find_pong()?,
        };
        // Check both directions exist before the first round.
        self.peer_fd(peer, vector)?;
        self.own_fd(vector)?;
        let me = self.id();
        // A write that lands before the ring (the eventfd write is a syscall
        // and orders it).
        let _ = self.memory().write(PING_OFFSET, &record(PING_MAGIC, me));
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

    /// Publishes our pong record and answers pings on `vector` until `stop`
    /// is readable; returns the number of answers.
    pub fn pong(
        &mut self,
        vector: u16,
        stop: Option<BorrowedFd<'_>>,
        out: &mut dyn Write,
    ) -> Result<u64, ClientError> {
        self.own_fd(vector)?;
        let me = self.id();
        let _ = self.memory().write(PONG_OFFSET, &record(PONG_MAGIC, me));
        writeln!(out, "pong id={me} vector={vector} ready")?;
        out.flush()?;
        let mut answered = 0;
        let mut limit = crate::protocol::ratelimit::RateLimit::new();
        loop {
            let own = self.own_fd(vector)?;
            if take(own)?.is_none() {
                // SAFETY: `own` outlives this borrow, used only by poll.
                let fd = unsafe { BorrowedFd::borrow_raw(own.as_raw_fd()) };
                let conn = (!self.conn.is_gone()).then(|| self.conn.as_fd());
                let ready = wait_any(&[Some(fd), conn, stop], None)?;
                if ready[2] {
                    return Ok(answered);
                }
                if ready[1] {
                    self.update();
                }
                continue;
            }
            match read_record(self, PING_OFFSET) {
                (PING_MAGIC, Some(pinger)) => match self.ring(pinger, vector) {
                    Ok(()) => answered += 1,
                    Err(e) => {
                        if limit.allow() {
                            log::warn!("cannot answer peer {pinger}: {e}");
                        }
                    }
                },
                (found, _) => {
                    if limit.allow() {
                        log::warn!("rung on vector {vector} but no PING record at offset 64 (found {found:?})");
                    }
                }
            }
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
    fn records_are_magic_then_le_id() {
        assert_eq!(record(PONG_MAGIC, 0x0102), *b"PONG\x02\x01\x00\x00");
    }
}
