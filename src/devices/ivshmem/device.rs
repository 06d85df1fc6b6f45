// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem PCI function: configuration space, the three BARs, and
//! keeping KVM's view (MMIO ranges, the BAR2 memory slot, doorbells) in
//! step with what the guest programs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::kvm_userspace_memory_region;

use super::bar0::{doorbell_target, Registers, BAR0_SIZE, DOORBELL};
use super::interrupts::Interrupts;
use std::collections::BTreeMap;

use vmm_sys_util::eventfd::EventFd;

use super::presence::{PeerSet, Presence, PRESENCE_BASE};
use super::IvshmemEnv;
use crate::bus::{BusDevice, SharedDevice};
use crate::devices::pci::config::{ConfigChange, PciConfig};
use crate::devices::pci::msix::{MsixEvent, MsixState, MSIX_MSG_CTRL, TABLE_ENTRY_SIZE};
use crate::devices::pci::root::PciFunction;
use crate::shm::ShmMapping;

/// BAR1's layout (QEMU's exclusive MSI-X BAR): table at 0, PBA at 0x800.
pub const BAR1_SIZE: u64 = 4096;
pub const MSIX_TABLE_OFFSET: u64 = 0;
pub const MSIX_PBA_OFFSET: u64 = 0x800;
/// KVM memory slots are in whole pages.
const PAGE_SIZE: u64 = 4096;
/// Vectors per device: the MSI-X table (16 bytes an entry) fits below the
/// PBA at 0x800 of the 4 KiB BAR1, as QEMU lays it out.
pub const MAX_VECTORS: u16 = (MSIX_PBA_OFFSET / TABLE_ENTRY_SIZE) as u16;

/// Routes MMIO on one BAR (0 or 1) to the device. Holds a weak reference
/// so the device, which owns its handlers, is not kept alive by them.
pub struct BarHandler {
    dev: Weak<Mutex<IvshmemDevice>>,
    bar: usize,
}

impl BusDevice for BarHandler {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.dev.upgrade() {
            Some(dev) => dev
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_read(self.bar, offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(dev) = self.dev.upgrade() {
            dev.lock()
                .unwrap_or_else(|e| e.into_inner())
                .bar_write(self.bar, offset, data);
        }
    }
}

/// Where one BAR is mapped right now (None: not mapped).
#[derive(Default)]
struct Mapped {
    at: Option<u64>,
}

pub struct IvshmemDevice {
    index: usize,
    config: PciConfig,
    regs: Registers,
    env: IvshmemEnv,
    mapping: ShmMapping,
    /// How much of BAR2 the mapping backs (the rest reads all-ones).
    bar2_backed: u64,
    /// Whether BAR2's MMIO range is on the bus (not when the guest put it
    /// over another BAR's).
    bar2_routed: bool,
    bar2_slot: u32,
    msix: Option<MsixState>,
    msix_cap: Option<u8>,
    pub(super) interrupts: Option<Interrupts>,
    /// The peer-presence extension (doorbell devices).
    presence: Option<Presence>,
    /// MMIO handlers of BAR0, BAR1 and BAR2 (BAR2's serves the accesses
    /// its memory slot does not: see `bar2_read`).
    handlers: [Option<SharedDevice>; 3],
    mapped: [Mapped; 3],
    /// Doorbell writes seen in plain mode (ignored, counted).
    plain_doorbells: u64,
}

/// What the device is built from (see `Ivshmem::new`).
pub struct DeviceParts {
    pub index: usize,
    pub config: PciConfig,
    pub env: IvshmemEnv,
    pub mapping: ShmMapping,
    pub bar2_backed: u64,
    pub bar2_slot: u32,
    pub msix: Option<(MsixState, u8)>,
    pub interrupts: Option<Interrupts>,
}

impl IvshmemDevice {
    /// Builds the device and maps its BARs where the config says.
    pub fn create(parts: DeviceParts) -> Arc<Mutex<IvshmemDevice>> {
        let (msix, msix_cap) = match parts.msix {
            Some((state, cap)) => (Some(state), Some(cap)),
            None => (None, None),
        };
        let has_bar1 = msix.is_some();
        let dev = Arc::new(Mutex::new(IvshmemDevice {
            index: parts.index,
            config: parts.config,
            regs: Registers::default(),
            env: parts.env,
            mapping: parts.mapping,
            bar2_backed: parts.bar2_backed,
            bar2_routed: false,
            bar2_slot: parts.bar2_slot,
            msix,
            msix_cap,
            presence: parts.interrupts.as_ref().map(|_| Presence::default()),
            interrupts: parts.interrupts,
            handlers: [None, None, None],
            mapped: Default::default(),
            plain_doorbells: 0,
        }));
        {
            let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
            let weak = Arc::downgrade(&dev);
            d.handlers[0] = Some(Arc::new(Mutex::new(BarHandler {
                dev: weak.clone(),
                bar: 0,
            })));
            if has_bar1 {
                d.handlers[1] = Some(Arc::new(Mutex::new(BarHandler {
                    dev: weak.clone(),
                    bar: 1,
                })));
            }
            d.handlers[2] = Some(Arc::new(Mutex::new(BarHandler { dev: weak, bar: 2 })));
            d.sync_mappings();
            d.sync_all_vectors();
        }
        dev
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn plain_doorbells(&self) -> u64 {
        self.plain_doorbells
    }

    /// Where BAR `bar` is mapped now (for the fuzz harness's invariants).
    #[cfg(any(test, feature = "fuzz"))]
    pub fn mapped_at(&self, bar: usize) -> Option<u64> {
        self.mapped.get(bar).and_then(|m| m.at)
    }

    /// The MSI-X state (for the fuzz harness, which reads it as the guest
    /// would, through `read_table` and `read_pba`).
    #[cfg(any(test, feature = "fuzz"))]
    pub fn msix(&self) -> Option<&MsixState> {
        self.msix.as_ref()
    }

    /// The interrupts, to announce peers as the server connection would.
    #[cfg(any(test, feature = "fuzz"))]
    pub fn interrupts_mut(&mut self) -> Option<&mut Interrupts> {
        self.interrupts.as_mut()
    }

    /// Guest MMIO read on BAR `bar`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match (bar, &self.msix) {
            (0, _) if offset >= PRESENCE_BASE => match (&self.presence, &self.interrupts) {
                (Some(p), Some(i)) => p.read(offset, data, i),
                _ => data.fill(0),
            },
            (0, _) => {
                let id = self.interrupts.as_ref().map_or(0, PeerSet::own_id);
                self.regs.read(offset, data, id)
            }
            (1, Some(msix)) if offset >= MSIX_PBA_OFFSET => {
                msix.read_pba(offset - MSIX_PBA_OFFSET, data)
            }
            (1, Some(msix)) => msix.read_table(offset - MSIX_TABLE_OFFSET, data),
            (2, _) => self.bar2_read(offset, data),
            _ => data.fill(0xff),
        }
    }

    /// A guest read of BAR2 that its memory slot did not serve: the tail
    /// the backing does not cover (it was never there, or it was truncated)
    /// reads all-ones; memory that exists is read through our mapping —
    /// that happens only while the slot is being re-created smaller, and
    /// keeps the guest's data right in that window.
    fn bar2_read(&self, offset: u64, data: &mut [u8]) {
        let backed = offset.saturating_add(data.len() as u64) <= self.bar2_backed;
        let read =
            backed && usize::try_from(offset).is_ok_and(|o| self.mapping.read(o, data).is_some());
        if !read {
            data.fill(0xff);
        }
    }

    /// Writes to the tail are dropped; to memory that exists, they go
    /// through our mapping (see `bar2_read`).
    fn bar2_write(&self, offset: u64, data: &[u8]) {
        if offset.saturating_add(data.len() as u64) <= self.bar2_backed {
            if let Ok(o) = usize::try_from(offset) {
                let _ = self.mapping.write(o, data);
            }
        }
    }

    /// Guest MMIO write on BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            0 if offset >= PRESENCE_BASE => {
                if let Some(p) = &mut self.presence {
                    p.write(offset, data);
                }
            }
            0 => {
                if let Some(value) = self.regs.write(offset, data) {
                    self.doorbell_write(value);
                }
            }
            1 if offset < MSIX_PBA_OFFSET => {
                let events = match &mut self.msix {
                    Some(msix) => msix.write_table(offset - MSIX_TABLE_OFFSET, data),
                    None => return,
                };
                self.apply_msix_events(&events);
            }
            2 => self.bar2_write(offset, data),
            _ => {} // PBA writes are ignored.
        }
    }

    /// A doorbell write that reached us: KVM matched no ioeventfd, so the
    /// peer or vector is unknown (or we're in plain mode). Dropped, counted.
    fn doorbell_write(&mut self, value: u32) {
        match &self.interrupts {
            Some(db) => {
                let n = db.stats.unmatched.fetch_add(1, Ordering::Relaxed) + 1;
                let (peer, vector) = doorbell_target(value);
                if crate::logger::worth_logging(n) {
                    log::info!(
                        "ivshmem{}: doorbell to peer {peer} vector {vector} matches no connected peer/vector; dropped ({n} so far)",
                        self.index
                    );
                }
            }
            None => self.plain_doorbells += 1,
        }
    }

    /// Applies MSI-X state changes: routes, irqfds, pending injections.
    fn apply_msix_events(&mut self, events: &[MsixEvent]) {
        if events.is_empty() {
            return;
        }
        let (Some(msix), Some(db)) = (&mut self.msix, &mut self.interrupts) else {
            return;
        };
        let all = events.iter().any(|e| {
            matches!(
                e,
                MsixEvent::Enabled
                    | MsixEvent::Disabled
                    | MsixEvent::FunctionMasked
                    | MsixEvent::FunctionUnmasked
            )
        });
        let mut watch_changed = false;
        for v in 0..db.vectors() {
            if self.env.stop.is_stopping() {
                return; // The VM is ending: no need to finish (see IvshmemEnv::stop).
            }
            let touched = all
                || events.iter().any(|e| match e {
                    MsixEvent::EntryUpdated { vector }
                    | MsixEvent::Masked { vector }
                    | MsixEvent::Unmasked { vector } => *vector == v,
                    _ => false,
                });
            if touched {
                watch_changed |= db.sync_vector(v, msix);
            }
        }
        for v in msix.take_newly_deliverable(events) {
            if v < db.vectors() {
                db.stats.pending_injected.fetch_add(1, Ordering::Relaxed);
                db.inject(msix, v);
            }
        }
        if watch_changed {
            db.notify_watch_changed();
        }
    }

    fn sync_all_vectors(&mut self) {
        let (Some(msix), Some(db)) = (&self.msix, &mut self.interrupts) else {
            return;
        };
        for v in 0..db.vectors() {
            db.sync_vector(v, msix);
        }
        db.notify_watch_changed();
    }

    /// What a guest sees of the peers changed (the event loop applied a
    /// server message): the extension's generation moves, and the guest's
    /// notification vector, if it asked for one, is rung.
    pub fn presence_changed(&mut self) {
        let ring = self.presence.as_mut().and_then(Presence::changed);
        self.ring_own(ring);
    }

    /// The server went away.
    pub fn server_lost(&mut self) {
        let ring = self.presence.as_mut().and_then(Presence::lost);
        self.ring_own(ring);
    }

    /// Joined a server again as `own_id` (see [`Interrupts::rejoin`]):
    /// IVPOSITION and the extension follow, unread events of masked
    /// vectors become pending bits.
    pub fn rejoined(
        &mut self,
        own_id: u16,
        own: Vec<EventFd>,
        own_rings: Vec<EventFd>,
        peers: BTreeMap<u16, Vec<EventFd>>,
    ) {
        let Some(db) = &mut self.interrupts else {
            return;
        };
        let pending = db.rejoin(own_id, own, own_rings, peers);
        if let Some(msix) = &mut self.msix {
            for v in pending {
                msix.set_pending(v);
            }
        }
        let ring = self.presence.as_mut().and_then(Presence::rejoined);
        self.ring_own(ring);
    }

    fn ring_own(&self, vector: Option<u16>) {
        if let (Some(v), Some(db)) = (vector, &self.interrupts) {
            db.ring_own(v);
        }
    }

    /// The event loop saw a masked vector's eventfd fire.
    pub fn vector_event(&mut self, v: u16) {
        if let (Some(msix), Some(db)) = (&mut self.msix, &mut self.interrupts) {
            db.on_vector_event(v, msix);
        }
    }

    /// Makes MMIO ranges, the memory slot and doorbells match the config:
    /// each BAR is mapped at its programmed address while memory decode is
    /// on and the address is usable, and unmapped otherwise.
    ///
    /// Everything that moves is unmapped before anything is mapped: BAR0
    /// moving to where BAR1 was in the same change (a swap) must not find
    /// BAR1 still there. A BAR that could not be mapped (it overlaps the
    /// other one on the bus) is tried again on every change.
    fn sync_mappings(&mut self) {
        let decode = self.config.memory_enabled();
        let mut want: [Option<u64>; 3] = [None; 3];
        for (bar, want) in want.iter_mut().enumerate() {
            if let Some(b) = self.config.bar(bar) {
                *want = (decode && self.env.bar_address_usable(b.addr, b.size)).then_some(b.addr);
            }
        }
        for (bar, want) in want.iter().enumerate() {
            match self.mapped[bar].at {
                Some(old) if Some(old) != *want => self.unmap(bar, old),
                _ => {}
            }
        }
        for (bar, want) in want.iter().enumerate() {
            if let Some(new) = *want {
                if self.mapped[bar].at != Some(new) {
                    self.map(bar, new);
                }
            }
        }
        let doorbell_at = self.mapped[0].at.map(|a| a + DOORBELL);
        if let Some(db) = &mut self.interrupts {
            db.set_doorbell_address(doorbell_at);
        }
    }

    /// BAR0 and BAR1 are MMIO ranges; BAR2 is an MMIO range (for what its
    /// slot does not serve) under its memory slot (which KVM prefers).
    fn map(&mut self, bar: usize, addr: u64) {
        let Some(h) = self.handlers[bar].clone() else {
            return;
        };
        let size = match bar {
            0 => BAR0_SIZE,
            1 => BAR1_SIZE,
            _ => self.config.bar(2).map_or(0, |b| b.size),
        };
        let bus = if bar == 2 {
            &self.env.mmio_under
        } else {
            &self.env.mmio
        };
        let routed = bus.insert(addr, size, h);
        if let Err(e) = &routed {
            log::info!(
                "ivshmem{}: BAR{bar} at {addr:#x} not routed: {e}",
                self.index
            );
            // BAR2 over another device's BAR2 (a guest's mistake) still gets
            // its slot, which KVM puts above MMIO, as it always did.
            if bar != 2 {
                return;
            }
        }
        if bar == 2 && self.bar2_backed > 0 && !self.set_slot(addr, self.bar2_backed) {
            if routed.is_ok() {
                let _ = self.env.mmio_under.remove(addr);
            }
            return;
        }
        if bar == 2 {
            self.bar2_routed = routed.is_ok();
        }
        self.mapped[bar].at = Some(addr);
    }

    fn unmap(&mut self, bar: usize, addr: u64) {
        if bar == 2 && self.bar2_backed > 0 {
            self.set_slot(addr, 0);
        }
        if bar != 2 {
            let _ = self.env.mmio.remove(addr);
        } else if std::mem::take(&mut self.bar2_routed) {
            let _ = self.env.mmio_under.remove(addr);
        }
        self.mapped[bar].at = None;
    }

    /// The object behind BAR2 is `size` bytes now. If that is less than we
    /// map, the memory slot shrinks to the pages that still exist (KVM
    /// changes a slot's size only by deleting and re-creating it): guest
    /// accesses past them exit to us, read all-ones and are dropped, as for
    /// the unbacked tail of any BAR2. Returns (mapped before, mapped now).
    /// Growing back is not followed: the guest was told the memory is gone.
    pub fn backing_shrank(&mut self, size: u64) -> Option<(u64, u64)> {
        let now = (size & !(PAGE_SIZE - 1)).min(self.bar2_backed);
        if now >= self.bar2_backed {
            return None;
        }
        // Shrink first what the MMIO handler serves from the mapping, then
        // the slot: in between, accesses exit to that handler.
        let was = std::mem::replace(&mut self.bar2_backed, now);
        if let Some(addr) = self.mapped[2].at {
            self.set_slot(addr, 0);
            if now > 0 {
                self.set_slot(addr, now);
            }
        }
        Some((was, now))
    }

    /// Maps (size > 0) or removes (size 0) BAR2's memory slot.
    fn set_slot(&self, addr: u64, size: u64) -> bool {
        let region = kvm_userspace_memory_region {
            slot: self.bar2_slot,
            guest_phys_addr: addr,
            memory_size: size,
            userspace_addr: self.mapping.host_addr() as u64,
            flags: 0,
        };
        // SAFETY: the mapping is owned by this device and outlives the slot:
        // the slot is removed before the device (and the VM) go away, and
        // KVM never touches it after the VM fd is closed.
        match unsafe { self.env.vm.set_user_memory_region(region) } {
            Ok(()) => true,
            Err(e) => {
                log::info!(
                    "ivshmem{}: BAR2 at {addr:#x} not mapped (overlaps other memory?): {e}",
                    self.index
                );
                false
            }
        }
    }
}

impl PciFunction for IvshmemDevice {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        let changes = self.config.write(offset, size, value);
        let mut remap = false;
        for change in changes {
            match change {
                ConfigChange::BarMoved { .. } | ConfigChange::MemoryDecode(_) => remap = true,
                ConfigChange::Capability { cap_offset, .. }
                    if Some(cap_offset) == self.msix_cap =>
                {
                    let ctrl = self.config.read(u16::from(cap_offset) + MSIX_MSG_CTRL, 2) as u16;
                    let events = match &mut self.msix {
                        Some(msix) => msix.write_control(ctrl),
                        None => Vec::new(),
                    };
                    self.apply_msix_events(&events);
                }
                ConfigChange::Capability { .. } => {}
            }
        }
        if remap {
            self.sync_mappings();
        }
    }
}

impl Drop for IvshmemDevice {
    fn drop(&mut self) {
        if let Some(addr) = self.mapped[2].at {
            self.unmap(2, addr);
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
