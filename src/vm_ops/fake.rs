// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`RecordingVm`]: a [`VmOps`] without `/dev/kvm`. It keeps what a VM
//! would hold — memory slots, ioeventfds, irqfds, the committed routing
//! table — and logs every MSI it delivers, refusing what KVM refuses with
//! KVM's errno (overlapping or resized slots, a second ioeventfd for the
//! same address and value, an eventfd that is already an irqfd, a routing
//! table KVM would reject), so a device that misuses KVM shows it here.
//!
//! Eventfds are known by their fd number, which is unique while they are
//! open; the caller (a test) keeps the numbers of the fds it handed out.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_msi, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use vmm_sys_util::errno;
use vmm_sys_util::eventfd::EventFd;

use super::{VmOps, VmResult};
use crate::irq::MsiMessage;

/// KVM_MAX_IRQ_ROUTES.
pub const MAX_ROUTES: usize = 4096;
/// NR_IOBUS_DEVS: devices on KVM's MMIO bus; the in-kernel IOAPIC is one.
pub const MMIO_BUS_DEVICES: usize = 1000 - 1;
const PAGE: u64 = 4096;

/// A memory slot as KVM holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub gpa: u64,
    pub size: u64,
    pub host: u64,
}

/// How an MSI reached the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A write to an irqfd, routed through its GSI's MSI route.
    Irqfd { gsi: u32, fd: RawFd },
    /// KVM_SIGNAL_MSI.
    Signal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered {
    pub msg: MsiMessage,
    pub source: Source,
}

/// What the fake VM holds now.
#[derive(Clone, Debug, Default)]
pub struct VmState {
    pub slots: BTreeMap<u32, Slot>,
    /// (MMIO address, datamatch) → the eventfd's number.
    pub ioeventfds: BTreeMap<(u64, u32), RawFd>,
    /// Eventfd number → GSI.
    pub irqfds: BTreeMap<RawFd, u32>,
    /// The table last committed (None before the first commit).
    pub routes: Option<Vec<kvm_irq_routing_entry>>,
    pub commits: u64,
    /// Every MSI delivered, in order.
    pub delivered: Vec<Delivered>,
    /// Calls refused, each with its reason.
    pub refused: Vec<String>,
}

impl VmState {
    /// The MSI route of `gsi` in the committed table.
    pub fn msi_route(&self, gsi: u32) -> Option<MsiMessage> {
        self.routes.as_ref()?.iter().find_map(|e| {
            (e.gsi == gsi && e.type_ == KVM_IRQ_ROUTING_MSI).then(|| {
                // SAFETY: an entry of type MSI holds the `msi` variant.
                let m = unsafe { e.u.msi };
                MsiMessage::from_halves(m.address_lo, m.address_hi, m.data)
            })
        })
    }
}

/// A fake VM that records instead of calling KVM.
#[derive(Default)]
pub struct RecordingVm {
    state: Mutex<VmState>,
}

fn refuse<T>(s: &mut VmState, errno_value: i32, why: String) -> VmResult<T> {
    s.refused.push(why);
    Err(errno::Error::new(errno_value))
}

impl RecordingVm {
    pub fn new() -> Self {
        Self::default()
    }

    /// A VM whose RAM is already in `slot` at `[gpa, gpa + size)`.
    pub fn with_ram(slot: u32, gpa: u64, size: u64) -> Self {
        let vm = Self::new();
        vm.lock().slots.insert(
            slot,
            Slot {
                gpa,
                size,
                host: 0x7f00_0000_0000,
            },
        );
        vm
    }

    pub fn lock(&self) -> MutexGuard<'_, VmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> VmState {
        self.lock().clone()
    }

    /// A 4-byte guest write of `value` at `addr`: the eventfd KVM would
    /// signal instead of exiting to the VMM, if any.
    pub fn ioevent_match(&self, addr: u64, value: u32) -> Option<RawFd> {
        self.lock().ioeventfds.get(&(addr, value)).copied()
    }

    /// Someone wrote the eventfd numbered `fd`: if it is an irqfd, KVM
    /// delivers its GSI's route (consuming the count, which the caller
    /// does) and this returns true; otherwise the count stays.
    pub fn eventfd_written(&self, fd: RawFd) -> bool {
        let mut s = self.lock();
        let Some(&gsi) = s.irqfds.get(&fd) else {
            return false;
        };
        if let Some(msg) = s.msi_route(gsi) {
            s.delivered.push(Delivered {
                msg,
                source: Source::Irqfd { gsi, fd },
            });
        }
        true
    }
}

/// Whether `fd` has a count to read (without reading it).
fn readable(fd: &EventFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call; a zero
    // timeout never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLIN != 0
}

fn check_routes(entries: &[kvm_irq_routing_entry]) -> Result<(), String> {
    if entries.len() > MAX_ROUTES {
        return Err(format!("{} routes, KVM allows {MAX_ROUTES}", entries.len()));
    }
    for (i, e) in entries.iter().enumerate() {
        if e.gsi as usize >= MAX_ROUTES || e.flags != 0 {
            return Err(format!("route {i}: gsi {} flags {}", e.gsi, e.flags));
        }
        if e.type_ != KVM_IRQ_ROUTING_MSI && e.type_ != KVM_IRQ_ROUTING_IRQCHIP {
            return Err(format!("route {i}: type {}", e.type_));
        }
        // One MSI route per GSI, alone; an irqchip at most once per GSI.
        for other in &entries[..i] {
            if other.gsi != e.gsi {
                continue;
            }
            let same_chip = e.type_ == KVM_IRQ_ROUTING_IRQCHIP
                && other.type_ == KVM_IRQ_ROUTING_IRQCHIP
                // SAFETY: both are irqchip entries.
                && unsafe { e.u.irqchip.irqchip == other.u.irqchip.irqchip };
            if e.type_ == KVM_IRQ_ROUTING_MSI || other.type_ == KVM_IRQ_ROUTING_MSI || same_chip {
                return Err(format!("route {i}: gsi {} routed twice", e.gsi));
            }
        }
    }
    Ok(())
}

impl VmOps for RecordingVm {
    unsafe fn set_user_memory_region(&self, r: kvm_userspace_memory_region) -> VmResult<()> {
        let mut s = self.lock();
        let what = format!(
            "slot {} at {:#x} size {:#x} host {:#x}",
            r.slot, r.guest_phys_addr, r.memory_size, r.userspace_addr
        );
        if r.flags != 0 {
            return refuse(&mut s, libc::EINVAL, format!("{what}: flags"));
        }
        if r.memory_size == 0 {
            if s.slots.remove(&r.slot).is_none() {
                return refuse(&mut s, libc::EINVAL, format!("{what}: removing no slot"));
            }
            return Ok(());
        }
        let end = r.guest_phys_addr.checked_add(r.memory_size);
        if (r.guest_phys_addr | r.memory_size | r.userspace_addr) % PAGE != 0 || end.is_none() {
            return refuse(&mut s, libc::EINVAL, format!("{what}: not page aligned"));
        }
        let end = end.unwrap_or(u64::MAX);
        if let Some(old) = s.slots.get(&r.slot).copied() {
            if old.size != r.memory_size || old.host != r.userspace_addr {
                return refuse(&mut s, libc::EINVAL, format!("{what}: resizes {old:?}"));
            }
        }
        let overlap = s
            .slots
            .iter()
            .find(|(n, o)| **n != r.slot && r.guest_phys_addr < o.gpa + o.size && o.gpa < end)
            .map(|(n, _)| *n);
        if let Some(other) = overlap {
            return refuse(
                &mut s,
                libc::EEXIST,
                format!("{what}: overlaps slot {other}"),
            );
        }
        s.slots.insert(
            r.slot,
            Slot {
                gpa: r.guest_phys_addr,
                size: r.memory_size,
                host: r.userspace_addr,
            },
        );
        Ok(())
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        let mut s = self.lock();
        if s.ioeventfds.contains_key(&(addr, datamatch)) {
            let why = format!("ioeventfd {addr:#x}={datamatch:#x} exists");
            return refuse(&mut s, libc::EEXIST, why);
        }
        if s.ioeventfds.len() >= MMIO_BUS_DEVICES {
            return refuse(&mut s, libc::ENOSPC, "MMIO bus full".to_string());
        }
        s.ioeventfds.insert((addr, datamatch), fd.as_raw_fd());
        Ok(())
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        let mut s = self.lock();
        if s.ioeventfds.get(&(addr, datamatch)) != Some(&fd.as_raw_fd()) {
            let why = format!(
                "no ioeventfd {addr:#x}={datamatch:#x} for fd {}",
                fd.as_raw_fd()
            );
            return refuse(&mut s, libc::ENOENT, why);
        }
        s.ioeventfds.remove(&(addr, datamatch));
        Ok(())
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        let raw = fd.as_raw_fd();
        {
            let mut s = self.lock();
            if let Some(old) = s.irqfds.get(&raw) {
                let why = format!("fd {raw} is already the irqfd of gsi {old}");
                return refuse(&mut s, libc::EBUSY, why);
            }
            s.irqfds.insert(raw, gsi);
        }
        // KVM checks for an event that came before the irqfd and delivers it.
        if readable(fd) && self.eventfd_written(raw) {
            let _ = fd.read();
        }
        Ok(())
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        let mut s = self.lock();
        let raw = fd.as_raw_fd();
        // KVM answers 0 whether or not it found the pair.
        if s.irqfds.get(&raw) == Some(&gsi) {
            s.irqfds.remove(&raw);
        }
        Ok(())
    }

    fn set_gsi_routing(&self, routing: &KvmIrqRouting) -> VmResult<()> {
        let entries = routing.as_slice();
        let mut s = self.lock();
        if let Err(why) = check_routes(entries) {
            return refuse(&mut s, libc::EINVAL, why);
        }
        s.routes = Some(entries.to_vec());
        s.commits += 1;
        Ok(())
    }

    fn signal_msi(&self, msi: kvm_msi) -> VmResult<i32> {
        let mut s = self.lock();
        if msi.flags != 0 {
            return refuse(&mut s, libc::EINVAL, format!("MSI flags {}", msi.flags));
        }
        s.delivered.push(Delivered {
            msg: MsiMessage::from_halves(msi.address_lo, msi.address_hi, msi.data),
            source: Source::Signal,
        });
        Ok(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::IrqRouting;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn region(slot: u32, gpa: u64, size: u64, host: u64) -> kvm_userspace_memory_region {
        kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
            flags: 0,
        }
    }

    fn set(vm: &RecordingVm, r: kvm_userspace_memory_region) -> VmResult<()> {
        // SAFETY: the fake never touches host memory.
        unsafe { vm.set_user_memory_region(r) }
    }

    #[test]
    fn slots_move_and_go_but_never_overlap_or_resize() {
        let vm = RecordingVm::with_ram(0, 0, 64 << 20);
        set(&vm, region(1, 1 << 32, 1 << 20, 0x1000)).unwrap();
        set(&vm, region(1, 2 << 32, 1 << 20, 0x1000)).expect("a move");
        assert_eq!(vm.lock().slots[&1].gpa, 2 << 32);
        let e = set(&vm, region(1, 2 << 32, 2 << 20, 0x1000)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "resize");
        let e = set(&vm, region(1, 0x10_0000, 1 << 20, 0x1000)).unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST, "onto RAM");
        let e = set(&vm, region(1, 0x1800, 1 << 20, 0x1000)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "unaligned");
        set(&vm, region(1, 0, 0, 0)).unwrap();
        assert!(!vm.lock().slots.contains_key(&1));
        let e = set(&vm, region(1, 0, 0, 0)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "removing twice");
        assert_eq!(vm.lock().refused.len(), 4);
    }

    #[test]
    fn ioeventfds_are_unique_per_address_and_value() {
        let vm = RecordingVm::new();
        let (a, b) = (EventFd::new(0).unwrap(), EventFd::new(0).unwrap());
        vm.register_ioevent(&a, 0x100c, 0x0001_0000).unwrap();
        let e = vm.register_ioevent(&b, 0x100c, 0x0001_0000).unwrap_err();
        assert_eq!(e.errno(), libc::EEXIST);
        vm.register_ioevent(&b, 0x100c, 0x0001_0001).unwrap();
        assert_eq!(vm.ioevent_match(0x100c, 0x0001_0001), Some(b.as_raw_fd()));
        assert_eq!(vm.ioevent_match(0x100c, 0x0002_0000), None);
        let e = vm.unregister_ioevent(&b, 0x100c, 0x0001_0000).unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT, "another fd's");
        vm.unregister_ioevent(&a, 0x100c, 0x0001_0000).unwrap();
        assert_eq!(vm.lock().ioeventfds.len(), 1);
    }

    #[test]
    fn irqfds_deliver_their_route_and_a_pending_event_on_attach() {
        let vm = RecordingVm::new();
        let irq = IrqRouting::new();
        let gsi = irq.allocate_gsi().unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x31,
        };
        irq.set_msi_route(&vm, gsi, msg).unwrap();
        assert_eq!(vm.lock().msi_route(gsi), Some(msg));
        assert_eq!(
            vm.lock().routes.as_ref().unwrap().len(),
            41,
            "defaults kept"
        );
        let fd = EventFd::new(EFD_NONBLOCK).unwrap();
        fd.write(1).unwrap();
        vm.register_irqfd(&fd, gsi).unwrap();
        assert!(fd.read().is_err(), "the early event was consumed");
        let e = vm.register_irqfd(&fd, gsi + 1).unwrap_err();
        assert_eq!(e.errno(), libc::EBUSY);
        assert!(vm.eventfd_written(fd.as_raw_fd()));
        let got: Vec<_> = vm.lock().delivered.iter().map(|d| d.msg).collect();
        assert_eq!(got, vec![msg, msg]);
        vm.unregister_irqfd(&fd, gsi).unwrap();
        assert!(!vm.eventfd_written(fd.as_raw_fd()), "detached");
        vm.signal_msi(kvm_msi {
            address_lo: 0xfee0_1000,
            data: 7,
            ..Default::default()
        })
        .unwrap();
        let last = *vm.lock().delivered.last().unwrap();
        assert_eq!(last.source, Source::Signal);
        assert_eq!(last.msg.address, 0xfee0_1000);
    }

    #[test]
    fn a_table_kvm_would_reject_is_refused() {
        let vm = RecordingVm::new();
        let mut e = kvm_irq_routing_entry {
            gsi: 30,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        let twice = KvmIrqRouting::from_entries(&[e, e]).unwrap();
        assert!(vm.set_gsi_routing(&twice).is_err());
        e.gsi = MAX_ROUTES as u32;
        let high = KvmIrqRouting::from_entries(&[e]).unwrap();
        assert!(vm.set_gsi_routing(&high).is_err());
        assert_eq!(vm.lock().commits, 0);
        assert_eq!(vm.lock().refused.len(), 2);
    }
}
