// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A log rate limiter: a peer that sends garbage in a loop must not flood the
//! log (or slow us down by making us write it).

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(5);
const PER_WINDOW: u32 = 10;

/// Allows `PER_WINDOW` messages per `WINDOW`, then counts the rest.
#[derive(Debug)]
pub struct RateLimit {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    pub fn new() -> Self {
        RateLimit {
            start: Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// True if one more message may be logged now. Opening a new window after
    /// suppressing some says how many were dropped.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.start) >= WINDOW {
            if self.suppressed > 0 {
                log::warn!("{} similar messages suppressed", self.suppressed);
            }
            self.start = now;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged < PER_WINDOW {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_suppresses() {
        let mut r = RateLimit::new();
        let allowed = (0..100).filter(|_| r.allow()).count();
        assert_eq!(allowed, PER_WINDOW as usize);
        assert_eq!(r.suppressed, 100 - u64::from(PER_WINDOW));
        r.start -= WINDOW;
        assert!(r.allow(), "a new window allows again");
    }
}
