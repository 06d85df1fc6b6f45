// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`Interrupts`]: both directions of a doorbell device's interrupts —
//! outgoing doorbell ioeventfds (one per peer and vector) and our own
//! vectors' irqfds, routes and masked-vector handling.
//!
//! The path of a doorbell never reaches this code: guest A's write to
//! DOORBELL matches a KVM ioeventfd registered here with datamatch
//! `(peer << 16) | vector`; KVM signals peer B's eventfd, which in B's VM is
//! an irqfd on the GSI whose MSI route came from B's MSI-X entry. This
//! module only *sets that up* and keeps it true as peers come and go, BAR0
//! moves and the guest masks vectors:
//!
//! - a deliverable vector (MSI-X enabled, function and entry unmasked) has
//!   its irqfd attached and its route current;
//! - any other vector has its irqfd detached; the event loop watches its
//!   eventfd instead and turns an event into the vector's pending bit;
//! - when a vector becomes deliverable with its pending bit set, it is
//!   injected once (KVM_SIGNAL_MSI) and the bit is cleared.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use kvm_bindings::kvm_msi;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::presence::PeerSet;
use crate::devices::pci::msix::MsixState;
use crate::irq::{IrqError, IrqRouting, MsiMessage};
use crate::stop::VmStop;
use crate::vm_ops::VmOps;

/// KVM allows 1000 devices on its MMIO bus (NR_IOBUS_DEVS) per VM; the
/// in-kernel IOAPIC uses one. We stay below with some margin.
pub const IOEVENTFD_BUDGET: usize = 990;

/// Doorbell ioeventfds registered in this VM, across all devices.
#[derive(Default, Debug)]
pub struct IoeventfdBudget {
    used: AtomicUsize,
}

impl IoeventfdBudget {
    fn take(&self) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < IOEVENTFD_BUDGET).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

/// Counters shown by `--stats`.
#[derive(Default, Debug)]
pub struct InterruptStats {
    /// Doorbell writes that matched no ioeventfd (unknown peer or vector).
    pub unmatched: AtomicU64,
    /// Events that arrived on a masked vector (become pending bits).
    pub masked_events: AtomicU64,
    /// Pending vectors injected on unmask.
    pub pending_injected: AtomicU64,
    pub peers_joined: AtomicU64,
    pub peers_left: AtomicU64,
    /// (peer, vector) pairs left unconnected because of the ioeventfd budget.
    pub over_budget: AtomicU64,
}

/// One of our own vectors.
struct OwnVector {
    evt: EventFd,
    gsi: u32,
    attached: bool,
    route: Option<MsiMessage>,
}

/// One outgoing doorbell: ring `fd` to interrupt (peer, vector).
struct PeerDoorbell {
    fd: EventFd,
    /// The DOORBELL address its ioeventfd is registered at.
    registered: Option<u64>,
}

/// The interrupting half of one ivshmem device.
pub struct Interrupts {
    vm: Arc<dyn VmOps>,
    irq: Arc<IrqRouting>,
    own_id: u16,
    incoming: Vec<OwnVector>,
    peers: BTreeMap<u16, Vec<Option<PeerDoorbell>>>,
    /// Where DOORBELL is now (BAR0 + 12), if BAR0 is mapped.
    doorbell_addr: Option<u64>,
    budget: Arc<IoeventfdBudget>,
    /// Written when the set of vectors the event loop must watch changes.
    pub watch_changed: EventFd,
    pub stats: Arc<InterruptStats>,
    /// Set once the VM is stopping: long loops give up (see `give_up_when`).
    stop: Option<Arc<VmStop>>,
}

impl Interrupts {
    /// Takes our id and incoming eventfds from the handshake; every vector
    /// starts masked (MSI-X is disabled at reset), so nothing is attached.
    pub fn new(
        vm: Arc<dyn VmOps>,
        irq: Arc<IrqRouting>,
        own_id: u16,
        own: Vec<EventFd>,
        budget: Arc<IoeventfdBudget>,
    ) -> Result<Self, IrqError> {
        let mut incoming = Vec::with_capacity(own.len());
        for evt in own {
            incoming.push(OwnVector {
                evt,
                gsi: irq.allocate_gsi()?,
                attached: false,
                route: None,
            });
        }
        let watch_changed = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| IrqError::Build(format!("eventfd: {e}")))?;
        let mut db = Interrupts {
            vm,
            irq,
            own_id,
            incoming,
            peers: BTreeMap::new(),
            doorbell_addr: None,
            budget,
            watch_changed,
            stats: Arc::new(InterruptStats::default()),
            stop: None,
        };
        // A peer may ring itself: our own eventfds are doorbells too (QEMU
        // registers them the same way).
        for v in 0..db.incoming.len() {
            if let Ok(fd) = db.incoming[v].evt.try_clone() {
                db.add_outgoing(own_id, v as u16, fd);
            }
        }
        Ok(db)
    }

    /// Work over every doorbell (a BAR0 move: peers × vectors KVM calls,
    /// milliseconds each on PVM) stops early once `stop` is stopping: a
    /// VM that ends does not need it, and its stop must not wait for it.
    pub fn give_up_when(&mut self, stop: Arc<VmStop>) {
        self.stop = Some(stop);
    }

    fn giving_up(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.is_stopping())
    }

    pub fn vectors(&self) -> u16 {
        self.incoming.len() as u16
    }

    /// Peers we can ring (ourselves included).
    pub fn peer_ids(&self) -> Vec<u16> {
        self.peers.keys().copied().collect()
    }

    /// A peer's `vector` can be rung through `fd`. Returns true if what a
    /// guest sees of the peers changed (a new peer, or a new vector).
    pub fn peer_joined(&mut self, id: u16, vector: u16, fd: EventFd) -> bool {
        if id == self.own_id {
            log::info!("ivshmem: server announced our own id {id} again; ignored");
            return false;
        }
        let before = self.peer_vectors(id);
        if before == 0 {
            self.stats.peers_joined.fetch_add(1, Ordering::Relaxed);
            log::info!("ivshmem: peer {id} joined");
        }
        self.add_outgoing(id, vector, fd);
        self.peer_vectors(id) != before
    }

    /// A peer left: its doorbells go away. Returns true if it was there.
    pub fn peer_left(&mut self, id: u16) -> bool {
        if id == self.own_id {
            return false;
        }
        let Some(vectors) = self.peers.remove(&id) else {
            return false;
        };
        self.stats.peers_left.fetch_add(1, Ordering::Relaxed);
        log::info!("ivshmem: peer {id} left");
        self.wiring().unregister_all(id, vectors);
        true
    }

    /// Joined a server again (docs/ivshmem-presence.md): our id is `own_id`
    /// now, our vectors ring through `own` (same count), and the peers are
    /// the new server's. Doorbells to the old peers go; attached vectors
    /// move their irqfd to the new eventfd on the same GSI and route. An
    /// event left unread on an old, detached eventfd is returned as the
    /// vectors to mark pending. `own_rings` are duplicates of `own`, our
    /// doorbells to ourselves.
    pub fn rejoin(
        &mut self,
        own_id: u16,
        own: Vec<EventFd>,
        own_rings: Vec<EventFd>,
        peers: BTreeMap<u16, Vec<EventFd>>,
    ) -> Vec<u16> {
        for (id, vectors) in std::mem::take(&mut self.peers) {
            self.wiring().unregister_all(id, vectors);
        }
        let mut pending = Vec::new();
        for (v, (inc, evt)) in self.incoming.iter_mut().zip(own).enumerate() {
            if inc.attached {
                if let Err(e) = self.vm.unregister_irqfd(&inc.evt, inc.gsi) {
                    log::warn!("ivshmem: vector {v}: detaching the old irqfd failed: {e}");
                }
                if let Err(e) = self.vm.register_irqfd(&evt, inc.gsi) {
                    log::warn!("ivshmem: vector {v}: attaching the new irqfd failed: {e}");
                    inc.attached = false;
                }
            } else if inc.evt.read().is_ok() {
                pending.push(v as u16);
            }
            inc.evt = evt;
        }
        self.own_id = own_id;
        for (v, fd) in own_rings.into_iter().enumerate() {
            self.add_outgoing(own_id, v as u16, fd);
        }
        for (id, fds) in peers {
            for (v, fd) in fds.into_iter().enumerate() {
                self.peer_joined(id, v as u16, fd);
            }
        }
        self.notify_watch_changed();
        pending
    }

    /// Rings our own vector `v`, as a peer's doorbell would (the presence
    /// notification): delivered through MSI-X, pending while masked.
    pub fn ring_own(&self, v: u16) {
        if let Some(inc) = self.incoming.get(usize::from(v)) {
            let _ = inc.evt.write(1);
        }
    }

    fn add_outgoing(&mut self, id: u16, vector: u16, fd: EventFd) {
        let v = usize::from(vector);
        let old = self.peers.get_mut(&id).and_then(|s| s.get_mut(v)?.take());
        if let Some(mut old) = old {
            // A repeated announcement replaces the old doorbell (first:
            // KVM refuses a second ioeventfd for the same address and value).
            self.wiring().unregister(id, vector, &mut old);
        }
        let mut out = PeerDoorbell {
            fd,
            registered: None,
        };
        if let Some(addr) = self.doorbell_addr {
            self.wiring().register(id, vector, &mut out, addr);
        }
        let slots = self.peers.entry(id).or_default();
        if slots.len() <= v {
            slots.resize_with(v + 1, || None);
        }
        slots[v] = Some(out);
    }

    /// BAR0 moved or memory decode changed: re-register every doorbell at
    /// DOORBELL's new address (`None`: unmapped).
    pub fn set_doorbell_address(&mut self, addr: Option<u64>) {
        if self.doorbell_addr == addr {
            return;
        }
        self.doorbell_addr = addr;
        let mut peers = std::mem::take(&mut self.peers);
        for (&id, slots) in &mut peers {
            if self.giving_up() {
                break;
            }
            for (v, out) in slots.iter_mut().enumerate() {
                let Some(out) = out else { continue };
                self.wiring().unregister(id, v as u16, out);
                if let Some(addr) = addr {
                    self.wiring().register(id, v as u16, out, addr);
                }
            }
        }
        self.peers = peers;
    }

    /// The KVM side of the doorbells.
    fn wiring(&self) -> Wiring<'_> {
        Wiring {
            vm: &*self.vm,
            budget: &self.budget,
            stats: &self.stats,
        }
    }

    /// Brings vector `v`'s irqfd and route in line with the MSI-X state.
    /// Returns true if the set of watched vectors changed.
    pub fn sync_vector(&mut self, v: u16, msix: &MsixState) -> bool {
        let deliverable = msix.deliverable(v);
        let message = msix.message(v);
        let Some(inc) = self.incoming.get_mut(usize::from(v)) else {
            return false;
        };
        if deliverable {
            if let Some(msg) = message {
                if inc.route != Some(msg) {
                    match self.irq.set_msi_route(&*self.vm, inc.gsi, msg) {
                        Ok(()) => inc.route = Some(msg),
                        Err(e) => log::warn!("ivshmem: vector {v}: {e}"),
                    }
                }
            }
            if !inc.attached && inc.route.is_some() {
                match self.vm.register_irqfd(&inc.evt, inc.gsi) {
                    Ok(()) => {
                        inc.attached = true;
                        return true;
                    }
                    Err(e) => log::warn!("ivshmem: vector {v}: attaching irqfd failed: {e}"),
                }
            }
        } else if inc.attached {
            if let Err(e) = self.vm.unregister_irqfd(&inc.evt, inc.gsi) {
                log::warn!("ivshmem: vector {v}: detaching irqfd failed: {e}");
            }
            inc.attached = false;
            return true;
        }
        false
    }

    /// Injects vector `v`'s current MSI message once.
    pub fn inject(&self, msix: &MsixState, v: u16) {
        let Some(m) = msix.message(v) else { return };
        let (address_lo, address_hi) = m.halves();
        let msi = kvm_msi {
            address_lo,
            address_hi,
            data: m.data,
            ..Default::default()
        };
        if let Err(e) = self.vm.signal_msi(msi) {
            log::warn!("ivshmem: injecting vector {v} failed: {e}");
        }
    }

    /// The event loop saw vector `v`'s eventfd readable while it was not
    /// attached: make the event pending, or deliver it if the vector became
    /// deliverable in the meantime.
    pub fn on_vector_event(&mut self, v: u16, msix: &mut MsixState) {
        let Some(inc) = self.incoming.get(usize::from(v)) else {
            return;
        };
        if inc.evt.read().is_err() {
            return; // Nothing there (KVM's irqfd took it first).
        }
        if msix.deliverable(v) {
            self.inject(msix, v);
        } else {
            self.stats.masked_events.fetch_add(1, Ordering::Relaxed);
            msix.set_pending(v);
        }
    }

    /// Vectors whose eventfd the event loop must watch (not attached).
    pub fn watched_fds(&self) -> Vec<(u16, RawFd)> {
        self.incoming
            .iter()
            .enumerate()
            .filter(|(_, inc)| !inc.attached)
            .map(|(v, inc)| (v as u16, inc.evt.as_raw_fd()))
            .collect()
    }

    /// Asks the event loop to re-read [`watched_fds`](Self::watched_fds).
    pub fn notify_watch_changed(&self) {
        let _ = self.watch_changed.write(1);
    }
}

/// What registering a doorbell with KVM takes: the VM, the budget and the
/// counters (not the doorbells themselves, which the caller holds).
struct Wiring<'a> {
    vm: &'a dyn VmOps,
    budget: &'a IoeventfdBudget,
    stats: &'a InterruptStats,
}

impl Wiring<'_> {
    fn register(&self, id: u16, vector: u16, out: &mut PeerDoorbell, addr: u64) {
        if !self.budget.take() {
            let n = self.stats.over_budget.fetch_add(1, Ordering::Relaxed) + 1;
            if crate::logger::worth_logging(n) {
                log::error!(
                    "ivshmem: doorbell for peer {id} vector {vector} not connected: KVM allows about {IOEVENTFD_BUDGET} doorbells per VM (peers × vectors); use fewer vectors or peers ({n} unconnected so far)"
                );
            }
            return;
        }
        let datamatch = super::bar0::doorbell_value(id, vector);
        match self.vm.register_ioevent(&out.fd, addr, datamatch) {
            Ok(()) => out.registered = Some(addr),
            Err(e) => {
                self.budget.give_back();
                // A guest can make KVM refuse (two devices' BAR0 over each
                // other, decode toggled in a loop): logged sparsely.
                let n = self.stats.over_budget.fetch_add(1, Ordering::Relaxed) + 1;
                if crate::logger::worth_logging(n) {
                    log::error!("ivshmem: KVM refused the doorbell for peer {id} vector {vector}: {e} ({n} unconnected so far)");
                }
            }
        }
    }

    fn unregister(&self, id: u16, vector: u16, out: &mut PeerDoorbell) {
        if let Some(addr) = out.registered.take() {
            let datamatch = super::bar0::doorbell_value(id, vector);
            if let Err(e) = self.vm.unregister_ioevent(&out.fd, addr, datamatch) {
                log::warn!("ivshmem: removing the doorbell for peer {id} vector {vector}: {e}");
            }
            self.budget.give_back();
        }
    }

    /// Peer `id`'s doorbells, gone.
    fn unregister_all(&self, id: u16, vectors: Vec<Option<PeerDoorbell>>) {
        for (v, out) in vectors.into_iter().enumerate() {
            if let Some(mut out) = out {
                self.unregister(id, v as u16, &mut out);
            }
        }
    }
}

impl PeerSet for Interrupts {
    fn own_id(&self) -> u16 {
        self.own_id
    }

    fn peer_count(&self) -> u32 {
        self.peers.keys().filter(|&&id| id != self.own_id).count() as u32
    }

    fn next_peer(&self, from: u32) -> Option<u16> {
        let from = u16::try_from(from).ok()?;
        self.peers
            .range(from..)
            .map(|(id, _)| *id)
            .find(|&id| id != self.own_id)
    }

    fn peer_vectors(&self, id: u16) -> u16 {
        if id == self.own_id {
            return 0;
        }
        self.peers.get(&id).map_or(0, |slots| slots.len() as u16)
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.set_doorbell_address(None);
        for inc in &mut self.incoming {
            if inc.attached {
                let _ = self.vm.unregister_irqfd(&inc.evt, inc.gsi);
            }
            self.irq.release_gsi(inc.gsi);
        }
    }
}
