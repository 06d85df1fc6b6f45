// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem-server wire format and the client side of it, one codec used by
//! the server, the VMM and `ivvmm client`.
//!
//! - [`codec`]: 8-byte little-endian messages with an optional SCM_RIGHTS fd.
//! - [`handshake`]: [`connect`] joins a server and returns our id, the shared
//!   memory and the eventfds, bounded by a timeout with one clear error per
//!   failure.
//! - [`peer`]: after the handshake, [`PeerConnection`] turns later messages
//!   into [`PeerEvent`]s (a peer's vector joined, a peer left, server gone).
//! - [`rejoin`]: when to join a server again, and which one to accept.

pub mod codec;
pub mod handshake;
pub mod peer;
pub(crate) mod ratelimit;
pub mod recv;
pub mod rejoin;

pub use handshake::{connect, connect_with, ConnectOptions, Handshake, HandshakeError};
pub use peer::{PeerConnection, PeerEvent};

/// QEMU's ivshmem-server offers at most 64 vectors per peer; so do our
/// server and, by default, our client.
pub const MAX_SERVER_VECTORS: u16 = 64;

/// The highest peer id: the doorbell register has 16 bits for it.
pub const MAX_PEER_ID: i64 = u16::MAX as i64;

/// `now + after`, saturating: a user may pass an absurdly long timeout, which
/// must mean "practically forever", not an overflow panic.
pub(crate) fn deadline_after(after: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 86400)))
        .unwrap_or(now)
}
