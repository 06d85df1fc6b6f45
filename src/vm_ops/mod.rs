// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`VmOps`]: the KVM calls a device makes on its VM after it is built —
//! memory slots, doorbell ioeventfds, irqfds, the GSI routing table and
//! KVM_SIGNAL_MSI — behind one small trait.
//!
//! The VMM hands devices a [`kvm_ioctls::VmFd`], which implements it by
//! forwarding each call. Tests and the fuzz harness hand them a
//! `fake::RecordingVm` (built for tests and `--features fuzz`) instead,
//! which keeps what a VM would hold (the slots, ioeventfds, irqfds and
//! routes) and logs each MSI it delivers, so the device's KVM side can be
//! checked without `/dev/kvm`.
//!
//! The doorbell path itself is not here: a doorbell is a guest write that
//! KVM matches against an ioeventfd and never reaches the VMM.

use kvm_bindings::{kvm_msi, kvm_userspace_memory_region, KvmIrqRouting};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// KVM's errors (an errno).
pub type VmResult<T> = Result<T, kvm_ioctls::Error>;

/// What a device asks of its VM once it exists.
pub trait VmOps: Send + Sync {
    /// KVM_SET_USER_MEMORY_REGION: creates, moves or (size 0) removes a slot.
    ///
    /// # Safety
    ///
    /// As for [`VmFd::set_user_memory_region`]: the host memory at
    /// `userspace_addr` must stay mapped for as long as the slot exists.
    unsafe fn set_user_memory_region(&self, region: kvm_userspace_memory_region) -> VmResult<()>;
    /// KVM_IOEVENTFD for a 4-byte MMIO write of `datamatch` at `addr`.
    fn register_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()>;
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()>;
    /// KVM_IRQFD: a write to `fd` raises `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()>;
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()>;
    /// KVM_SET_GSI_ROUTING: replaces the whole routing table.
    fn set_gsi_routing(&self, routing: &KvmIrqRouting) -> VmResult<()>;
    /// KVM_SIGNAL_MSI: injects one MSI now.
    fn signal_msi(&self, msi: kvm_msi) -> VmResult<i32>;
}

impl VmOps for VmFd {
    unsafe fn set_user_memory_region(&self, region: kvm_userspace_memory_region) -> VmResult<()> {
        // SAFETY: the caller upholds the same contract this method states.
        unsafe { VmFd::set_user_memory_region(self, region) }
    }

    fn register_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        VmFd::register_ioevent(self, fd, &IoEventAddress::Mmio(addr), datamatch)
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        VmFd::unregister_ioevent(self, fd, &IoEventAddress::Mmio(addr), datamatch)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        VmFd::register_irqfd(self, fd, gsi)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        VmFd::unregister_irqfd(self, fd, gsi)
    }

    fn set_gsi_routing(&self, routing: &KvmIrqRouting) -> VmResult<()> {
        VmFd::set_gsi_routing(self, routing)
    }

    fn signal_msi(&self, msi: kvm_msi) -> VmResult<i32> {
        VmFd::signal_msi(self, msi)
    }
}

#[cfg(any(test, feature = "fuzz"))]
pub mod fake;
