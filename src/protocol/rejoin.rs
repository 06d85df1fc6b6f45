// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Joining a server again after it went away (docs/ivshmem-presence.md),
//! the rules the VMM's devices and `ivvmm client --rejoin` share: when to
//! try ([`Backoff`]) and which server to accept ([`refusal`]).

use std::time::Duration;

use super::Handshake;
use crate::shm::ShmIdentity;

/// The first try comes this long after the loss; each failure doubles it.
const FIRST_TRY: Duration = Duration::from_millis(100);
/// Never more than this between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The waits before each try: 100 ms, then doubling up to one try a second.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(FIRST_TRY)
    }
}

impl Backoff {
    /// How long to wait before the next try.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (wait * 2).min(MAX_BACKOFF);
        wait
    }
}

/// Why a server that answered is not one to rejoin, or None to rejoin it:
/// it must offer the very object we map (`memory`; None: we cannot tell
/// what we map, so nothing matches) and give us `vectors` vectors again.
/// Mapping other memory under a running guest would corrupt its data.
pub fn refusal(memory: Option<ShmIdentity>, vectors: usize, hs: &Handshake) -> Option<String> {
    let found = hs.shm.identity();
    match (memory, found) {
        (Some(want), Some(m)) if m == want => {}
        (Some(want), Some(m)) if m.size != want.size => {
            return Some(format!(
                "it offers {} bytes of shared memory, this one maps {}",
                m.size, want.size
            ))
        }
        _ => return Some("it offers a different shared-memory object than the one mapped here (restart it with the same -M NAME --keep-shm)".into()),
    }
    let given = hs.own.len();
    (given != vectors).then(|| format!("it gives {given} vectors per peer, this one has {vectors}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_100_ms_up_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
