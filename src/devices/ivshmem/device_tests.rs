// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The device against a real KVM VM: whatever a guest writes to config
//! space, BAR0 or BAR1 (sizing probes, BAR moves onto RAM or each other,
//! decode toggles, MSI-X table garbage), nothing panics and the device ends
//! in a state a proper program can fix.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::ivshmem::interrupts::{Interrupts, IoeventfdBudget};
use crate::devices::ivshmem::{IvshmemEnv, IVSHMEM_IDS};
use crate::devices::pci::config::{BarKind, PciConfig, COMMAND_MEMORY};
use crate::devices::pci::msix::{msix_capability, MsixState, MSIX_CAP_ID};
use crate::devices::pci::root::PciFunction;
use crate::irq::IrqRouting;
use crate::shm::ShmBackend;

/// A tiny deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) => Some(k),
        Err(e) if std::env::var_os("IVVMM_SKIP_KVM_TESTS").is_some() => {
            eprintln!("SKIPPED: needs /dev/kvm ({e})");
            None
        }
        Err(e) => panic!("needs /dev/kvm ({e}); set IVVMM_SKIP_KVM_TESTS=1 to skip"),
    }
}

fn doorbell_device(vm: Arc<dyn crate::vm_ops::VmOps>) -> Arc<std::sync::Mutex<IvshmemDevice>> {
    let irq = Arc::new(IrqRouting::new());
    let env = IvshmemEnv {
        vm: vm.clone(),
        mmio: Arc::new(crate::bus::Bus::new("MMIO")),
        mmio_under: Arc::new(crate::bus::Bus::new("MMIO under memory slots")),
        irq: irq.clone(),
        mem_size: 64 << 20,
        phys_bits: 40,
        budget: Arc::new(IoeventfdBudget::default()),
        seccomp: crate::sandbox::SeccompMode::Off,
        stop: Arc::new(crate::stop::VmStop::new().unwrap()),
    };
    let shm = ShmBackend::memfd(1 << 20, true).unwrap();
    let mapping = shm.map().unwrap();
    let mut config = PciConfig::new(IVSHMEM_IDS);
    let none = BarKind::Mem32 {
        prefetchable: false,
    };
    config.add_bar(0, 0x100, none, 0xc000_0000).unwrap();
    config.add_bar(1, BAR1_SIZE, none, 0xc000_1000).unwrap();
    config
        .add_bar(2, 1 << 20, BarKind::Mem64 { prefetchable: true }, 1 << 32)
        .unwrap();
    config.set_initial_command(COMMAND_MEMORY);
    let (body, wmask) = msix_capability(4, 1, 0, 1, MSIX_PBA_OFFSET as u32).unwrap();
    let cap = config.add_capability(MSIX_CAP_ID, &body, &wmask).unwrap();
    let own = (0..4).map(|_| EventFd::new(0).unwrap()).collect();
    let mut db = Interrupts::new(vm, irq, 3, own, env.budget.clone()).unwrap();
    db.peer_joined(7, 0, EventFd::new(0).unwrap());
    db.peer_joined(7, 1, EventFd::new(0).unwrap());
    let dev = IvshmemDevice::create(DeviceParts {
        index: 0,
        config,
        env,
        mapping,
        bar2_backed: 1 << 20,
        bar2_slot: 5,
        msix: Some((MsixState::new(4), cap)),
        interrupts: Some(db),
    });
    // Keep the object alive as long as the mapping needs it: the mapping
    // holds its own reference to the memory, so dropping `shm` is fine.
    drop(shm);
    dev
}

#[test]
fn random_guest_writes_never_panic_and_leave_a_usable_device() {
    let Some(kvm) = kvm() else { return };
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    // Guest RAM at 0..64M so BAR moves can collide with it.
    let ram =
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 64 << 20)])
            .unwrap();
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in ram.iter() {
        let slot = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `ram` outlives the VM in this test.
        unsafe { vm.set_user_memory_region(slot) }.unwrap();
    }
    let dev = doorbell_device(vm.clone());
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let interesting = [
        0u32,
        u32::MAX,
        0xc000_0000,
        0x0400_0000,
        0xfee0_0000,
        1,
        0x8000,
        0xc000,
    ];
    for _ in 0..30_000 {
        let r = rng.next();
        let value = if r & 8 == 0 {
            interesting[(r >> 4) as usize % interesting.len()]
        } else {
            (r >> 32) as u32
        };
        let size = [1u8, 2, 4][(r >> 8) as usize % 3];
        let mut d = dev.lock().unwrap();
        match r % 4 {
            0 | 1 => {
                // Config space, biased to the header and the capability.
                let offset = ((r >> 16) % 0x60) as u16;
                let offset = offset - offset % u16::from(size);
                d.config_write(offset, size, value);
                let _ = d.config_read(offset, size);
            }
            2 => {
                let offset = (r >> 16) % 0x100;
                let bytes = value.to_le_bytes();
                d.bar_write(0, offset, &bytes[..usize::from(size)]);
                let mut buf = [0u8; 8];
                d.bar_read(0, offset, &mut buf[..usize::from(size)]);
            }
            _ => {
                let offset = (r >> 16) % BAR1_SIZE;
                let len = [1usize, 2, 4, 8][(r >> 40) as usize % 4];
                let bytes = u64::from(value).wrapping_mul(r).to_le_bytes();
                d.bar_write(1, offset, &bytes[..len]);
                let mut buf = [0u8; 8];
                d.bar_read(1, offset, &mut buf[..len]);
            }
        }
    }
    // A proper program can still take over: restore BARs, enable decode,
    // and read IVPOSITION through the bus.
    let mut d = dev.lock().unwrap();
    d.config_write(0x04, 2, 0);
    d.config_write(0x10, 4, 0xc000_0000);
    d.config_write(0x14, 4, 0xc000_1000);
    d.config_write(0x18, 4, 0);
    d.config_write(0x1c, 4, 1);
    d.config_write(0x04, 2, 0x6);
    drop(d);
    let mmio = dev.lock().unwrap().env.mmio.clone();
    let mut pos = [0u8; 4];
    assert!(mmio.read(0xc000_0008, &mut pos), "BAR0 mapped again");
    assert_eq!(u32::from_le_bytes(pos), 3);
}

/// Found by the fuzz harness: swapping BAR0 and BAR1 with decode on (BAR0
/// onto BAR1's address, then BAR1 onto BAR0's old one) left BAR0 unmapped
/// — and its doorbells unregistered — because BAR0 was mapped before BAR1
/// had left. Needs no KVM: the recording fake stands in.
#[test]
fn swapping_bar0_and_bar1_maps_both() {
    use crate::vm_ops::fake::RecordingVm;
    let fake = Arc::new(RecordingVm::new());
    let dev = doorbell_device(fake.clone());
    let set = |off: u16, v: u32| dev.lock().unwrap().config_write(off, 4, v);
    set(0x10, 0xc000_1000); // BAR0 onto BAR1: refused by the bus for now
    assert_eq!(dev.lock().unwrap().mapped_at(0), None);
    set(0x14, 0xc000_0000); // BAR1 onto BAR0's old place
    let d = dev.lock().unwrap();
    assert_eq!(
        d.mapped_at(0),
        Some(0xc000_1000),
        "BAR0 mapped after the swap"
    );
    assert_eq!(d.mapped_at(1), Some(0xc000_0000));
    let mmio = d.env.mmio.clone();
    drop(d);
    let mut pos = [0u8; 4];
    assert!(mmio.read(0xc000_1008, &mut pos));
    assert_eq!(u32::from_le_bytes(pos), 3, "IVPOSITION at the new BAR0");
    let doorbells: Vec<u64> = fake.lock().ioeventfds.keys().map(|k| k.0).collect();
    assert!(!doorbells.is_empty());
    assert!(
        doorbells.iter().all(|&a| a == 0xc000_100c),
        "{doorbells:x?}"
    );
}
