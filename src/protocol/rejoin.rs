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

/// Why a server that answered is not one to rejoin. Said once per kind
/// ([`Refusal::said_before`]): a server that offers another size at every
/// try must not fill the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Size { offered: u64, mapped: u64 },
    OtherObject,
    Vectors { given: usize, have: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Size { offered, mapped } => write!(
                f,
                "it offers {offered} bytes of shared memory, this one maps {mapped}"
            ),
            Refusal::OtherObject => write!(
                f,
                "it offers a different shared-memory object than the one mapped here (restart it with the same -M NAME --keep-shm)"
            ),
            Refusal::Vectors { given, have } => {
                write!(f, "it gives {given} vectors per peer, this one has {have}")
            }
        }
    }
}

impl Refusal {
    /// Whether `said` (the last refusal logged) is of this kind; if not,
    /// it becomes this one and the caller logs it.
    pub fn said_before(&self, said: &mut Option<Refusal>) -> bool {
        let before = said
            .as_ref()
            .is_some_and(|s| std::mem::discriminant(s) == std::mem::discriminant(self));
        if !before {
            *said = Some(self.clone());
        }
        before
    }
}

/// Why a server that answered is not one to rejoin, or None to rejoin it:
/// it must offer the very object we map (`memory`; None: we cannot tell
/// what we map, so nothing matches) and give us `vectors` vectors again.
/// Mapping other memory under a running guest would corrupt its data.
pub fn refusal(memory: Option<ShmIdentity>, vectors: usize, hs: &Handshake) -> Option<Refusal> {
    let found = hs.shm.identity();
    match (memory, found) {
        (Some(want), Some(m)) if m == want => {}
        (Some(want), Some(m)) if m.size != want.size => {
            return Some(Refusal::Size {
                offered: m.size,
                mapped: want.size,
            })
        }
        _ => return Some(Refusal::OtherObject),
    }
    let given = hs.own.len();
    (given != vectors).then_some(Refusal::Vectors {
        given,
        have: vectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_said_once_per_kind() {
        let mut said = None;
        let size = |offered| Refusal::Size {
            offered,
            mapped: 4096,
        };
        assert!(!size(8192).said_before(&mut said));
        assert!(
            size(16384).said_before(&mut said),
            "another size: same kind"
        );
        assert!(!Refusal::OtherObject.said_before(&mut said));
        assert!(!size(8192).said_before(&mut said), "a new kind again");
        assert_eq!(
            size(8192).to_string(),
            "it offers 8192 bytes of shared memory, this one maps 4096"
        );
    }

    #[test]
    fn the_wait_doubles_from_100_ms_up_to_a_second() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
    }
}
