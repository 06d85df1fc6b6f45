// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The peer-presence extension (docs/ivshmem-presence.md): registers in
//! BAR0 from 0x80, announced by a vendor-specific capability, that tell a
//! guest which peers are present, whether the server link is up, and our id
//! after a rejoin. Pure data: the device asks it what a guest access reads
//! and tells it what changed; the peers themselves are read through
//! [`PeerSet`], which the device's interrupts implement.

/// Where the registers start in BAR0 (QEMU reads everything from 16 up as 0).
pub const PRESENCE_BASE: u64 = 0x80;
/// `IVPR`, little-endian: in the capability and in `PR_MAGIC`.
pub const PRESENCE_SIGNATURE: u32 = u32::from_le_bytes(*b"IVPR");
pub const PRESENCE_VERSION: u8 = 1;
/// PCI capability ID of a vendor-specific capability.
pub const VENDOR_CAP_ID: u8 = 0x09;

pub const PR_MAGIC: u64 = 0x80;
pub const PR_VERSION: u64 = 0x84;
pub const PR_GENERATION: u64 = 0x88;
pub const PR_LINK: u64 = 0x8c;
pub const PR_OWN_ID: u64 = 0x90;
pub const PR_PEER_COUNT: u64 = 0x94;
pub const PR_PEER_SELECT: u64 = 0x98;
pub const PR_PEER_NEXT: u64 = 0x9c;
pub const PR_PEER_VECTORS: u64 = 0xa0;
pub const PR_NOTIFY: u64 = 0xa4;
pub const PR_REJOINS: u64 = 0xa8;

/// `PR_NOTIFY` bit 31: signal the vector in bits 0..15 on every change.
pub const NOTIFY_ENABLE: u32 = 1 << 31;
/// `PR_PEER_NEXT` when no peer id is at or above `PR_PEER_SELECT`.
pub const NO_PEER: u32 = u32::MAX;

/// The capability's body after its ID and next pointer: length, version,
/// signature, the BAR with the registers, three reserved bytes.
pub fn capability_body() -> [u8; 10] {
    let sig = PRESENCE_SIGNATURE.to_le_bytes();
    [
        12,
        PRESENCE_VERSION,
        sig[0],
        sig[1],
        sig[2],
        sig[3],
        0,
        0,
        0,
        0,
    ]
}

/// The server link as `PR_LINK` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Connected = 1,
    Lost = 2,
    Rejoined = 3,
}

/// The peers a guest can see: ourselves excluded.
pub trait PeerSet {
    /// Our own id (what IVPOSITION reads).
    fn own_id(&self) -> u16;
    fn peer_count(&self) -> u32;
    /// The smallest present peer id ≥ `from`.
    fn next_peer(&self, from: u32) -> Option<u16>;
    /// How many vectors peer `id` has (0: not present).
    fn peer_vectors(&self, id: u16) -> u16;
}

/// The extension's own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    generation: u32,
    link: Link,
    rejoins: u32,
    select: u32,
    notify: u32,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            generation: 1,
            link: Link::Connected,
            rejoins: 0,
            select: 0,
            notify: 0,
        }
    }
}

impl Presence {
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Something a guest can see changed (a join, a leave). Returns the
    /// vector to signal, if the guest asked for notifications.
    pub fn changed(&mut self) -> Option<u16> {
        // Never 0: a driver may use 0 as "not read yet".
        self.generation = self.generation.wrapping_add(1).max(1);
        (self.notify & NOTIFY_ENABLE != 0).then_some(self.notify as u16)
    }

    /// The server went away.
    pub fn lost(&mut self) -> Option<u16> {
        self.link = Link::Lost;
        self.changed()
    }

    /// We joined a server again (our id may be another now).
    pub fn rejoined(&mut self) -> Option<u16> {
        self.link = Link::Rejoined;
        self.rejoins = self.rejoins.saturating_add(1);
        self.changed()
    }

    /// A guest read at `offset` of BAR0 (from [`PRESENCE_BASE`] up).
    pub fn read(&self, offset: u64, data: &mut [u8], peers: &dyn PeerSet) {
        let value = if data.len() == 4 {
            match offset {
                PR_MAGIC => PRESENCE_SIGNATURE,
                PR_VERSION => u32::from(PRESENCE_VERSION),
                PR_GENERATION => self.generation,
                PR_LINK => self.link as u32,
                PR_OWN_ID => u32::from(peers.own_id()),
                PR_PEER_COUNT => peers.peer_count(),
                PR_PEER_SELECT => self.select,
                PR_PEER_NEXT => peers.next_peer(self.select).map_or(NO_PEER, u32::from),
                PR_PEER_VECTORS => {
                    u16::try_from(self.select).map_or(0, |id| u32::from(peers.peer_vectors(id)))
                }
                PR_NOTIFY => self.notify,
                PR_REJOINS => self.rejoins,
                _ => 0,
            }
        } else {
            0
        };
        super::bar0::answer(data, value);
    }

    /// A guest write at `offset` of BAR0 (from [`PRESENCE_BASE`] up).
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            PR_PEER_SELECT => self.select = value,
            // Only the enable bit and the vector are kept.
            PR_NOTIFY => self.notify = value & (NOTIFY_ENABLE | 0xffff),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Our id, and the others' ids with their vector counts.
    struct Peers(u16, BTreeMap<u16, u16>);

    impl PeerSet for Peers {
        fn own_id(&self) -> u16 {
            self.0
        }
        fn peer_count(&self) -> u32 {
            self.1.len() as u32
        }
        fn next_peer(&self, from: u32) -> Option<u16> {
            let from = u16::try_from(from).ok()?;
            self.1.range(from..).next().map(|(id, _)| *id)
        }
        fn peer_vectors(&self, id: u16) -> u16 {
            self.1.get(&id).copied().unwrap_or(0)
        }
    }

    fn read(p: &Presence, peers: &Peers, off: u64) -> u32 {
        let mut d = [0u8; 4];
        p.read(off, &mut d, peers);
        u32::from_le_bytes(d)
    }

    fn write(p: &mut Presence, off: u64, v: u32) {
        p.write(off, &v.to_le_bytes());
    }

    #[test]
    fn a_walk_finds_every_peer_with_its_vectors() {
        let peers = Peers(3, BTreeMap::from([(2, 4), (5, 1), (9, 2)]));
        let mut p = Presence::default();
        assert_eq!(read(&p, &peers, PR_MAGIC), u32::from_le_bytes(*b"IVPR"));
        assert_eq!(read(&p, &peers, PR_OWN_ID), 3);
        assert_eq!(read(&p, &peers, PR_PEER_COUNT), 3);
        let mut found = Vec::new();
        let mut next = 0u32;
        loop {
            write(&mut p, PR_PEER_SELECT, next);
            let id = read(&p, &peers, PR_PEER_NEXT);
            if id == NO_PEER {
                break;
            }
            write(&mut p, PR_PEER_SELECT, id);
            found.push((id, read(&p, &peers, PR_PEER_VECTORS)));
            next = id + 1;
        }
        assert_eq!(found, vec![(2, 4), (5, 1), (9, 2)]);
        write(&mut p, PR_PEER_SELECT, 0x1_0000);
        assert_eq!(read(&p, &peers, PR_PEER_NEXT), NO_PEER);
        assert_eq!(read(&p, &peers, PR_PEER_VECTORS), 0);
    }

    #[test]
    fn generation_moves_on_every_change_and_link_follows_loss_and_rejoin() {
        let mut peers = Peers(1, BTreeMap::new());
        let mut p = Presence::default();
        assert_eq!(read(&p, &peers, PR_GENERATION), 1);
        assert_eq!(read(&p, &peers, PR_LINK), Link::Connected as u32);
        p.changed();
        assert_eq!(read(&p, &peers, PR_GENERATION), 2);
        p.lost();
        assert_eq!(read(&p, &peers, PR_LINK), Link::Lost as u32);
        p.rejoined();
        peers.0 = 7;
        assert_eq!(read(&p, &peers, PR_LINK), Link::Rejoined as u32);
        assert_eq!(read(&p, &peers, PR_OWN_ID), 7);
        assert_eq!(read(&p, &peers, PR_REJOINS), 1);
        assert_eq!(read(&p, &peers, PR_GENERATION), 4);
    }

    #[test]
    fn notification_is_off_until_the_guest_enables_it() {
        let mut p = Presence::default();
        assert_eq!(p.changed(), None);
        write(&mut p, PR_NOTIFY, 3);
        assert_eq!(p.changed(), None, "a vector without the enable bit");
        write(&mut p, PR_NOTIFY, NOTIFY_ENABLE | 0x7_0003);
        assert_eq!(p.changed(), Some(3));
        assert_eq!(p.lost(), Some(3));
        write(&mut p, PR_NOTIFY, 0);
        assert_eq!(p.rejoined(), None);
    }

    #[test]
    fn narrow_and_unknown_accesses_read_zero_and_change_nothing() {
        let peers = Peers(0, BTreeMap::from([(1, 1)]));
        let mut p = Presence::default();
        let before = p.clone();
        let mut two = [0xaau8; 2];
        p.read(PR_MAGIC, &mut two, &peers);
        assert_eq!(two, [0, 0]);
        p.write(PR_NOTIFY, &[0xff, 0xff]);
        p.write(PR_GENERATION, &7u32.to_le_bytes());
        p.write(0xfc, &7u32.to_le_bytes());
        assert_eq!(p, before);
        assert_eq!(read(&p, &peers, 0xfc), 0);
        assert_eq!(read(&p, &peers, 0xb0), 0);
    }

    #[test]
    fn generation_never_reads_zero_after_wrapping() {
        let mut p = Presence {
            generation: u32::MAX,
            ..Default::default()
        };
        p.changed();
        assert_eq!(p.generation(), 1);
    }
}
