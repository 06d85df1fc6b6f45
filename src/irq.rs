// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! GSI allocation and the KVM interrupt routing table.
//!
//! `KVM_SET_GSI_ROUTING` replaces the *whole* table, so this module keeps a
//! copy of it — starting with KVM's own default routes for the PIC and the
//! IOAPIC — and every change to an MSI route re-commits all of it. Without
//! the defaults, the first MSI route would silently cut off the serial port,
//! the PIT and every other legacy interrupt.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use thiserror::Error;

use crate::vm_ops::VmOps;

/// GSIs below this are the IOAPIC's pins (and, below 16, the PICs').
pub const IOAPIC_PINS: u32 = 24;
/// The largest GSI number KVM accepts (KVM_MAX_IRQ_ROUTES - 1).
pub const MAX_GSI: u32 = 4095;

#[derive(Debug, Error)]
pub enum IrqError {
    #[error("out of interrupt numbers (GSIs): at most {} MSI vectors fit in one VM", MAX_GSI + 1 - IOAPIC_PINS)]
    OutOfGsis,
    #[error("KVM rejected the interrupt routing table: {0}")]
    SetRouting(kvm_ioctls::Error),
    #[error("building the interrupt routing table failed: {0}")]
    Build(String),
}

/// An MSI message: what a device writes, and where, to raise an interrupt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

impl MsiMessage {
    /// The address as KVM's MSI structures hold it: (low, high) halves.
    pub fn halves(self) -> (u32, u32) {
        (self.address as u32, (self.address >> 32) as u32)
    }

    /// The message KVM's MSI structures describe: the inverse of
    /// [`halves`](Self::halves).
    pub fn from_halves(address_lo: u32, address_hi: u32, data: u32) -> Self {
        MsiMessage {
            address: u64::from(address_hi) << 32 | u64::from(address_lo),
            data,
        }
    }
}

struct Table {
    routes: BTreeMap<u32, Vec<kvm_irq_routing_entry>>,
    free: Vec<u32>,
    next_gsi: u32,
}

/// The VM's routing table. Shared by every device that routes MSIs.
pub struct IrqRouting {
    table: Mutex<Table>,
}

impl Default for IrqRouting {
    fn default() -> Self {
        Self::new()
    }
}

impl IrqRouting {
    /// A table holding KVM's default routes (see `kvm_setup_default_irq_routing`):
    /// GSI n → IOAPIC pin n for n < 24, and for n < 16 also PIC pin n % 8.
    pub fn new() -> Self {
        let mut routes = BTreeMap::new();
        for gsi in 0..IOAPIC_PINS {
            let mut entries = vec![irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, gsi)];
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip_entry(gsi, chip, gsi % 8));
            }
            routes.insert(gsi, entries);
        }
        IrqRouting {
            table: Mutex::new(Table {
                routes,
                free: Vec::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    /// Reserves a GSI for an MSI vector. It has no route until
    /// [`set_msi_route`](Self::set_msi_route).
    pub fn allocate_gsi(&self) -> Result<u32, IrqError> {
        let mut t = self.lock();
        if let Some(gsi) = t.free.pop() {
            return Ok(gsi);
        }
        if t.next_gsi > MAX_GSI {
            return Err(IrqError::OutOfGsis);
        }
        let gsi = t.next_gsi;
        t.next_gsi += 1;
        Ok(gsi)
    }

    /// Gives a GSI back, dropping its route (committed on the next change).
    pub fn release_gsi(&self, gsi: u32) {
        if gsi < IOAPIC_PINS {
            return;
        }
        let mut t = self.lock();
        t.routes.remove(&gsi);
        if !t.free.contains(&gsi) {
            t.free.push(gsi);
        }
    }

    /// Points `gsi` at `msg` and commits the whole table to KVM.
    pub fn set_msi_route(&self, vm: &dyn VmOps, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        let mut t = self.lock();
        t.routes.insert(gsi, vec![msi_entry(gsi, msg)]);
        commit(vm, &t)
    }

    /// Removes the route of `gsi` (keeping the GSI reserved) and commits.
    pub fn clear_route(&self, vm: &dyn VmOps, gsi: u32) -> Result<(), IrqError> {
        let mut t = self.lock();
        if gsi >= IOAPIC_PINS && t.routes.remove(&gsi).is_some() {
            commit(vm, &t)?;
        }
        Ok(())
    }

    /// The entries as they would be handed to KVM, in GSI order.
    pub fn entries(&self) -> Vec<kvm_irq_routing_entry> {
        self.lock().routes.values().flatten().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn commit(vm: &dyn VmOps, t: &Table) -> Result<(), IrqError> {
    let entries: Vec<_> = t.routes.values().flatten().copied().collect();
    let routing =
        KvmIrqRouting::from_entries(&entries).map_err(|e| IrqError::Build(format!("{e:?}")))?;
    vm.set_gsi_routing(&routing).map_err(IrqError::SetRouting)
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    let (lo, hi) = msg.halves();
    e.u.msi.address_lo = lo;
    e.u.msi.address_hi = hi;
    e.u.msi.data = msg.data;
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table_matches_kvms_defaults() {
        let r = IrqRouting::new();
        let entries = r.entries();
        // 24 IOAPIC routes plus 16 PIC routes.
        assert_eq!(entries.len(), 40);
        let serial: Vec<_> = entries.iter().filter(|e| e.gsi == 4).collect();
        assert_eq!(serial.len(), 2);
        // SAFETY: these entries were built as irqchip routes above.
        let chips: Vec<_> = serial
            .iter()
            .map(|e| unsafe { (e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chips.contains(&(KVM_IRQCHIP_IOAPIC, 4)));
        assert!(chips.contains(&(KVM_IRQCHIP_PIC_MASTER, 4)));
        let slave = entries.iter().find(|e| {
            // SAFETY: every entry of the default table is an irqchip route.
            e.gsi == 12 && unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_PIC_SLAVE
        });
        // SAFETY: as above.
        assert_eq!(slave.map(|e| unsafe { e.u.irqchip.pin }), Some(4));
        assert_eq!(entries.iter().filter(|e| e.gsi == 23).count(), 1);
    }

    #[test]
    fn gsis_start_above_the_ioapic_and_are_reused_after_release() {
        let r = IrqRouting::new();
        let a = r.allocate_gsi().unwrap();
        let b = r.allocate_gsi().unwrap();
        assert_eq!((a, b), (24, 25));
        r.release_gsi(a);
        assert_eq!(r.allocate_gsi().unwrap(), 24);
        // Legacy GSIs can't be released.
        r.release_gsi(4);
        assert_eq!(r.entries().iter().filter(|e| e.gsi == 4).count(), 2);
    }

    #[test]
    fn gsi_space_is_bounded() {
        let r = IrqRouting::new();
        for _ in IOAPIC_PINS..=MAX_GSI {
            r.allocate_gsi().unwrap();
        }
        assert!(matches!(r.allocate_gsi(), Err(IrqError::OutOfGsis)));
    }

    #[test]
    fn msi_entries_split_the_address() {
        let e = msi_entry(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        );
        assert_eq!(e.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: built as an MSI route just above.
        let (lo, hi, data) = unsafe { (e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x41));
        assert_eq!(
            MsiMessage::from_halves(lo, hi, data),
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41
            },
            "from_halves undoes halves"
        );
    }
}
