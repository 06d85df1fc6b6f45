// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem device as a guest and a server drive it: configuration
//! space, BAR0 registers, the MSI-X table and PBA (through the MMIO bus,
//! where the guest's accesses go), BAR sizing and moves, decode toggles,
//! peers joining and leaving, events on our vectors — over the recording
//! fake VM. After every operation the device is compared with a model
//! kept here from the specifications, not from the device's code:
//!
//! - configuration space reads back through its write masks (a shadow of
//!   all 256 bytes, with the masks the PCI spec and our layout give);
//!   sizing probes read the size mask and type bits; the capability list
//!   ends;
//! - BAR0's registers and the MSI-X table and PBA read as the model says;
//! - a vector that is not deliverable (MSI-X off, function or entry masked)
//!   is never delivered: its event becomes its pending bit, which is
//!   injected exactly once when it becomes deliverable; a deliverable one
//!   is delivered once per event with the entry's current message;
//! - the fake VM holds exactly what the device's state implies: the BAR2
//!   slot at BAR2 iff decode is on and the address usable, one ioeventfd
//!   per (peer, vector) at BAR0 + 12 iff BAR0 is mapped, an irqfd with a
//!   current route iff the vector is deliverable; KVM refused nothing;
//! - when the device goes, everything it gave KVM goes with it.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_msi, kvm_userspace_memory_region, KvmIrqRouting};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Failure, Rng, Target};
use crate::arch::x86_64::layout::{self, Mmio32Allocator, Mmio64Allocator};
use crate::bus::Bus;
use crate::devices::ivshmem::device::{
    DeviceParts, IvshmemDevice, BAR1_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET,
};
use crate::devices::ivshmem::interrupts::{Interrupts, IoeventfdBudget};
use crate::devices::ivshmem::{IvshmemEnv, IVSHMEM_IDS};
use crate::devices::pci::config::{BarKind, PciConfig, COMMAND_MEMORY};
use crate::devices::pci::msix::{msix_capability, MsixState, MSIX_CAP_ID};
use crate::devices::pci::root::PciFunction;
use crate::irq::{IrqRouting, MsiMessage};
use crate::shm::ShmBackend;
use crate::vm_ops::fake::RecordingVm;
use crate::vm_ops::{VmOps, VmResult};

const BAR0_SIZE: u64 = 256;
const BAR2_SLOT: u32 = 2;
const CAP: usize = 0x40;

/// A deliberately broken KVM side, to prove the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Detaching an irqfd "succeeds" but leaves it attached: a masked
    /// vector can then be delivered.
    KeepIrqfds,
    /// Removing a memory slot "succeeds" but leaves it.
    KeepSlots,
}

/// The fake VM, possibly sabotaged.
struct Vm {
    fake: Arc<RecordingVm>,
    sabotage: Sabotage,
}

impl VmOps for Vm {
    unsafe fn set_user_memory_region(&self, r: kvm_userspace_memory_region) -> VmResult<()> {
        if r.memory_size == 0 && self.sabotage == Sabotage::KeepSlots {
            return Ok(());
        }
        // SAFETY: the fake never touches host memory.
        unsafe { self.fake.set_user_memory_region(r) }
    }
    fn register_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        self.fake.register_ioevent(fd, addr, datamatch)
    }
    fn unregister_ioevent(&self, fd: &EventFd, addr: u64, datamatch: u32) -> VmResult<()> {
        self.fake.unregister_ioevent(fd, addr, datamatch)
    }
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        self.fake.register_irqfd(fd, gsi)
    }
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> VmResult<()> {
        if self.sabotage == Sabotage::KeepIrqfds {
            return Ok(());
        }
        self.fake.unregister_irqfd(fd, gsi)
    }
    fn set_gsi_routing(&self, routing: &KvmIrqRouting) -> VmResult<()> {
        self.fake.set_gsi_routing(routing)
    }
    fn signal_msi(&self, msi: kvm_msi) -> VmResult<i32> {
        self.fake.signal_msi(msi)
    }
}

/// The device target.
pub struct DeviceTarget {
    pub sabotage: Sabotage,
}

/// The shape of one device.
#[derive(Clone, Debug)]
pub struct DeviceSetup {
    pub mem_size: u64,
    pub phys_bits: u8,
    pub bar2_size: u64,
    pub bar2_backed: u64,
    /// (our id, vectors); None: ivshmem-plain.
    pub doorbell: Option<(u16, u16)>,
}

/// Which BAR an MMIO operation aims at (its programmed address), or an
/// absolute address.
#[derive(Clone, Copy, Debug)]
pub enum Aim {
    Bar(u8),
    Abs(u64),
}

#[derive(Clone, Debug)]
pub enum DevOp {
    ConfigRead {
        offset: u16,
        size: u8,
    },
    ConfigWrite {
        offset: u16,
        size: u8,
        value: u32,
    },
    MmioRead {
        aim: Aim,
        offset: u64,
        len: u8,
    },
    MmioWrite {
        aim: Aim,
        offset: u64,
        len: u8,
        value: u64,
    },
    /// Programs BAR `bar` (both halves of a 64-bit one, low first).
    BarMove {
        bar: u8,
        addr: u64,
    },
    /// Writes all-ones to BAR register `reg` and reads it back.
    Probe {
        reg: u8,
    },
    Decode(bool),
    MsixControl {
        enable: bool,
        fmask: bool,
    },
    EntryMask {
        vector: u16,
        masked: bool,
    },
    EntryMessage {
        vector: u16,
        address: u64,
        data: u32,
    },
    PeerJoin {
        id: u16,
        vector: u16,
    },
    PeerLeave {
        id: u16,
    },
    /// A peer rings our `vector` (its eventfd is written).
    Ring {
        vector: u16,
    },
    /// The guest writes DOORBELL.
    Doorbell {
        id: u16,
        vector: u16,
    },
}

impl Target for DeviceTarget {
    type Op = DevOp;
    type Setup = DeviceSetup;

    fn name(&self) -> &'static str {
        "ivshmem-device"
    }

    fn setup(&self, rng: &mut Rng) -> DeviceSetup {
        let mem_size = rng.pick(&[64 << 20, 512 << 20, 3 << 30, 5 << 30]);
        let phys_bits = rng.pick(&[36u8, 39, 40, 46, 0]);
        let bar2_size: u64 = rng.pick(&[4096, 64 << 10, 1 << 20, 32 << 20]);
        let bar2_backed = if rng.chance(1, 4) {
            (bar2_size / 2).max(4096)
        } else {
            bar2_size
        };
        let doorbell = rng.chance(4, 5).then(|| {
            let id = rng.pick(&[0u16, 1, 3, 65535]);
            let vectors = rng.pick(&[1u16, 2, 4, 8, 64, 65]);
            (id, vectors)
        });
        DeviceSetup {
            mem_size,
            phys_bits,
            bar2_size,
            bar2_backed,
            doorbell,
        }
    }

    fn generate(&self, s: &DeviceSetup, rng: &mut Rng, len: usize) -> Vec<DevOp> {
        (0..len).map(|_| gen_op(s, rng)).collect()
    }

    fn execute(&self, s: &DeviceSetup, ops: &[DevOp]) -> Result<(), Failure> {
        let mut run = Run::new(s, self.sabotage).map_err(|what| Failure { step: 0, what })?;
        run.check().map_err(|what| Failure { step: 0, what })?;
        for (step, op) in ops.iter().enumerate() {
            run.apply(op)
                .and_then(|()| run.check())
                .map_err(|what| Failure { step, what })?;
        }
        run.finish().map_err(|what| Failure {
            step: ops.len().saturating_sub(1),
            what: format!("after the device dropped: {what}"),
        })
    }
}

const VALUES: [u32; 10] = [
    0,
    u32::MAX,
    0xc000_0000,
    0xc000_1000,
    0xfee0_0000,
    1,
    0x8000,
    0xc000,
    0x4000,
    0x0010_0000,
];

fn gen_value(rng: &mut Rng) -> u32 {
    if rng.chance(1, 2) {
        rng.pick(&VALUES)
    } else {
        rng.next_u32()
    }
}

fn gen_size(rng: &mut Rng) -> u8 {
    if rng.chance(1, 20) {
        rng.pick(&[0u8, 3, 8, 255])
    } else {
        rng.pick(&[1u8, 2, 4])
    }
}

fn gen_config_offset(rng: &mut Rng, size: u8) -> u16 {
    let offset = match rng.below(20) {
        0 => rng.below(0x1100) as u16,
        1 => rng.below(0x100) as u16,
        _ => rng.below(0x50) as u16,
    };
    if rng.chance(9, 10) && size > 0 {
        offset - offset % u16::from(size)
    } else {
        offset
    }
}

fn gen_addr(s: &DeviceSetup, rng: &mut Rng) -> u64 {
    let limit = 1u64 << layout::sane_phys_bits(s.phys_bits);
    let window = layout::mmio64_window(s.mem_size, s.phys_bits);
    let random = rng.next_u64() & (limit - 1);
    rng.pick(&[
        0,
        0xc000_0000,
        0xc000_1000,
        0xc000_0800,
        0x0010_0000,
        0xbfff_f000,
        0xfee0_0000,
        1 << 32,
        window.start,
        limit.saturating_sub(s.bar2_size),
        limit,
        u64::MAX,
        random,
    ])
}

fn gen_op(s: &DeviceSetup, rng: &mut Rng) -> DevOp {
    let vectors = s.doorbell.map_or(1, |(_, v)| v);
    let own = s.doorbell.map_or(0, |(id, _)| id);
    let vector = |rng: &mut Rng| rng.below(u64::from(vectors) + 1) as u16;
    let peer = |rng: &mut Rng| rng.pick(&[own, 1, 2, 7, 65535]);
    match rng.below(100) {
        0..=9 => {
            let size = gen_size(rng);
            DevOp::ConfigRead {
                offset: gen_config_offset(rng, size),
                size,
            }
        }
        10..=24 => {
            let size = gen_size(rng);
            DevOp::ConfigWrite {
                offset: gen_config_offset(rng, size),
                size,
                value: gen_value(rng),
            }
        }
        25..=34 => DevOp::MmioRead {
            aim: gen_aim(s, rng),
            offset: gen_mmio_offset(rng),
            len: rng.pick(&[4, 4, 8, 1, 2, 3]),
        },
        35..=46 => DevOp::MmioWrite {
            aim: gen_aim(s, rng),
            offset: gen_mmio_offset(rng),
            len: rng.pick(&[4, 4, 8, 1, 2, 3]),
            value: u64::from(gen_value(rng)) | u64::from(gen_value(rng)) << 32,
        },
        47..=54 => DevOp::BarMove {
            bar: rng.pick(&[0, 1, 2]),
            addr: gen_addr(s, rng),
        },
        55..=57 => DevOp::Probe {
            reg: rng.below(6) as u8,
        },
        58..=62 => DevOp::Decode(rng.chance(2, 3)),
        63..=68 => DevOp::MsixControl {
            enable: rng.chance(3, 4),
            fmask: rng.chance(1, 4),
        },
        69..=76 => DevOp::EntryMask {
            vector: vector(rng),
            masked: rng.chance(1, 2),
        },
        77..=80 => DevOp::EntryMessage {
            vector: vector(rng),
            address: 0xfee0_0000 | rng.below(16) << 12,
            data: rng.below(256) as u32,
        },
        81..=85 => DevOp::PeerJoin {
            id: peer(rng),
            vector: vector(rng),
        },
        86..=87 => DevOp::PeerLeave { id: peer(rng) },
        88..=95 => DevOp::Ring {
            vector: rng.below(u64::from(vectors)) as u16,
        },
        _ => DevOp::Doorbell {
            id: peer(rng),
            vector: vector(rng),
        },
    }
}

fn gen_aim(s: &DeviceSetup, rng: &mut Rng) -> Aim {
    if rng.chance(1, 10) {
        Aim::Abs(gen_addr(s, rng))
    } else {
        Aim::Bar(rng.pick(&[0, 0, 1, 1, 1, 2]))
    }
}

fn gen_mmio_offset(rng: &mut Rng) -> u64 {
    match rng.below(12) {
        0 => rng.below(0x1010),
        1..=3 => MSIX_PBA_OFFSET + rng.below(0x20),
        // The presence registers (BAR0 0x80..0xb0).
        4 | 5 => 0x80 + rng.below(0x30),
        _ => rng.below(0x40),
    }
}

/// One of our vectors: the fd number the device holds and our clone.
struct OwnFd {
    raw: RawFd,
    clone: EventFd,
}

/// The model's MSI-X table entry.
#[derive(Clone, Copy, Default)]
struct Entry {
    dwords: [u32; 4],
}

impl Entry {
    fn masked(&self) -> bool {
        self.dwords[3] & 1 != 0
    }
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.dwords[1]) << 32 | u64::from(self.dwords[0]),
            data: self.dwords[2],
        }
    }
}

struct Run {
    s: DeviceSetup,
    fake: Arc<RecordingVm>,
    mmio: Arc<Bus>,
    irq: Arc<IrqRouting>,
    budget: Arc<IoeventfdBudget>,
    dev: Option<Arc<Mutex<IvshmemDevice>>>,
    host_addr: u64,
    // The model.
    shadow: [u8; 256],
    wmask: [u8; 256],
    w1c: [u8; 256],
    /// (size, 64-bit, prefetchable) per BAR register index.
    bars: [Option<(u64, bool, bool)>; 6],
    intrmask: u32,
    intrstatus: u32,
    own_id: u16,
    own: Vec<OwnFd>,
    entries: Vec<Entry>,
    pending: Vec<bool>,
    peers: BTreeMap<u16, BTreeMap<u16, OwnFd>>,
    expected: Vec<MsiMessage>,
    /// Vectors rung during this operation (their eventfds must be empty).
    rung: Vec<u16>,
    delivered_seen: usize,
    commits_seen: u64,
    /// The presence extension (docs/ivshmem-presence.md) as the model holds it.
    pr_generation: u32,
    pr_select: u32,
    pr_notify: u32,
}

fn err<T>(what: impl Into<String>) -> Result<T, String> {
    Err(what.into())
}

impl Run {
    fn new(s: &DeviceSetup, sabotage: Sabotage) -> Result<Run, String> {
        let fake = Arc::new(RecordingVm::new());
        for (slot, (gpa, len)) in layout::ram_regions(s.mem_size).into_iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: gpa.0,
                memory_size: len as u64,
                userspace_addr: 0x7f00_0000_0000 + ((slot as u64) << 40),
                flags: 0,
            };
            // SAFETY: the fake never touches host memory.
            unsafe { fake.set_user_memory_region(r) }.map_err(|e| format!("RAM slot: {e}"))?;
        }
        let vm: Arc<dyn VmOps> = Arc::new(Vm {
            fake: fake.clone(),
            sabotage,
        });
        let mmio = Arc::new(Bus::new("MMIO"));
        let irq = Arc::new(IrqRouting::new());
        let budget = Arc::new(IoeventfdBudget::default());
        let env = IvshmemEnv {
            vm: vm.clone(),
            mmio: mmio.clone(),
            mmio_under: Arc::new(Bus::new("MMIO under memory slots")),
            irq: irq.clone(),
            mem_size: s.mem_size,
            phys_bits: s.phys_bits,
            budget: budget.clone(),
            seccomp: crate::sandbox::SeccompMode::Off,
            stop: Arc::new(crate::stop::VmStop::new().map_err(|e| e.to_string())?),
        };
        let shm = ShmBackend::memfd(s.bar2_backed, false).map_err(|e| e.to_string())?;
        let mapping = shm.map().map_err(|e| e.to_string())?;
        let host_addr = mapping.host_addr() as u64;
        let mut a32 = Mmio32Allocator::new();
        let mut a64 = Mmio64Allocator::new(layout::mmio64_window(s.mem_size, s.phys_bits));
        let bar0 = a32.alloc(BAR0_SIZE, BAR0_SIZE).ok_or("no BAR0 space")?;
        let bar2 = a64.alloc(s.bar2_size).ok_or("no BAR2 space")?;
        let mut config = PciConfig::new(IVSHMEM_IDS);
        let mem32 = BarKind::Mem32 {
            prefetchable: false,
        };
        let cfg = |e: crate::devices::pci::config::ConfigError| e.to_string();
        config.add_bar(0, BAR0_SIZE, mem32, bar0).map_err(cfg)?;
        config
            .add_bar(2, s.bar2_size, BarKind::Mem64 { prefetchable: true }, bar2)
            .map_err(cfg)?;
        config.set_initial_command(COMMAND_MEMORY);
        let mut bars = [None; 6];
        bars[0] = Some((BAR0_SIZE, false, false));
        bars[2] = Some((s.bar2_size, true, true));
        let (mut msix, mut interrupts, mut own) = (None, None, Vec::new());
        let (own_id, vectors) = s.doorbell.unwrap_or((0, 0));
        if s.doorbell.is_some() {
            let bar1 = a32.alloc(BAR1_SIZE, BAR1_SIZE).ok_or("no BAR1 space")?;
            config.add_bar(1, BAR1_SIZE, mem32, bar1).map_err(cfg)?;
            bars[1] = Some((BAR1_SIZE, false, false));
            let (body, wmask) = msix_capability(
                vectors,
                1,
                MSIX_TABLE_OFFSET as u32,
                1,
                MSIX_PBA_OFFSET as u32,
            )
            .map_err(|e| e.to_string())?;
            let cap = config
                .add_capability(MSIX_CAP_ID, &body, &wmask)
                .map_err(cfg)?;
            let mut fds = Vec::new();
            for _ in 0..vectors {
                let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
                own.push(OwnFd {
                    raw: fd.as_raw_fd(),
                    clone: fd.try_clone().map_err(|e| e.to_string())?,
                });
                fds.push(fd);
            }
            let db = Interrupts::new(vm, irq.clone(), own_id, fds, budget.clone())
                .map_err(|e| e.to_string())?;
            msix = Some((MsixState::new(vectors), cap));
            interrupts = Some(db);
        }
        let dev = IvshmemDevice::create(DeviceParts {
            index: 0,
            config,
            env,
            mapping,
            bar2_backed: s.bar2_backed,
            bar2_slot: BAR2_SLOT,
            msix,
            interrupts,
        });
        let mut run = Run {
            s: s.clone(),
            fake,
            mmio,
            irq,
            budget,
            dev: Some(dev),
            host_addr,
            shadow: [0; 256],
            wmask: [0; 256],
            w1c: [0; 256],
            bars,
            intrmask: 0,
            intrstatus: 0,
            own_id,
            own,
            entries: vec![
                Entry {
                    dwords: [0, 0, 0, 1]
                };
                usize::from(vectors)
            ],
            pending: vec![false; usize::from(vectors)],
            peers: BTreeMap::new(),
            expected: Vec::new(),
            rung: Vec::new(),
            delivered_seen: 0,
            commits_seen: 0,
            pr_generation: 1,
            pr_select: 0,
            pr_notify: 0,
        };
        run.init_model(bar0, bar2)?;
        Ok(run)
    }

    /// The expected initial space and its masks, from the PCI spec and the
    /// layout QEMU gives ivshmem; the device's first reads must match.
    fn init_model(&mut self, bar0: u64, bar2: u64) -> Result<(), String> {
        let ids = IVSHMEM_IDS;
        let put = |sh: &mut [u8; 256], off: usize, bytes: &[u8]| {
            sh[off..off + bytes.len()].copy_from_slice(bytes)
        };
        let sh = &mut self.shadow;
        put(sh, 0, &ids.vendor.to_le_bytes());
        put(sh, 2, &ids.device.to_le_bytes());
        put(sh, 4, &COMMAND_MEMORY.to_le_bytes());
        put(sh, 8, &[ids.revision]);
        put(sh, 9, &ids.class.to_le_bytes()[..3]);
        put(sh, 0x0e, &[ids.header_type]);
        put(sh, 0x10, &(bar0 as u32).to_le_bytes());
        put(sh, 0x18, &((bar2 as u32) | 0b1100).to_le_bytes());
        put(sh, 0x1c, &((bar2 >> 32) as u32).to_le_bytes());
        put(sh, 0x2c, &ids.subsys_vendor.to_le_bytes());
        put(sh, 0x2e, &ids.subsys_id.to_le_bytes());
        // Command: I/O, memory, master, parity, SERR#, INTx disable.
        self.wmask[4] = 0x47;
        self.wmask[5] = 0x05;
        self.w1c[7] = 0xf9;
        self.wmask[0x0c] = 0xff;
        self.wmask[0x3c] = 0xff;
        if let Some((_, vectors)) = self.s.doorbell {
            let bar1 = self.bar_addr_from_device(1)?;
            let sh = &mut self.shadow;
            put(sh, 0x14, &(bar1 as u32).to_le_bytes());
            put(sh, 6, &0x0010u16.to_le_bytes());
            put(sh, 0x34, &[CAP as u8]);
            put(sh, CAP, &[MSIX_CAP_ID, 0]);
            put(sh, CAP + 2, &(vectors - 1).to_le_bytes());
            put(sh, CAP + 4, &(MSIX_TABLE_OFFSET as u32 | 1).to_le_bytes());
            put(sh, CAP + 8, &(MSIX_PBA_OFFSET as u32 | 1).to_le_bytes());
            self.wmask[CAP + 3] = 0xc0;
        }
        for (i, bar) in self.bars.iter().enumerate() {
            let Some((size, wide, _)) = *bar else {
                continue;
            };
            let mask = !(size - 1) & !0xf;
            let reg = 0x10 + 4 * i;
            let width = if wide { 8 } else { 4 };
            self.wmask[reg..reg + width].copy_from_slice(&mask.to_le_bytes()[..width]);
        }
        Ok(())
    }

    fn bar_addr_from_device(&self, bar: usize) -> Result<u64, String> {
        let dev = self.dev()?;
        let v = dev
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .config_read(0x10 + 4 * bar as u16, 4);
        Ok(u64::from(v & !0xf))
    }

    fn dev(&self) -> Result<&Arc<Mutex<IvshmemDevice>>, String> {
        self.dev.as_ref().ok_or_else(|| "device gone".to_string())
    }

    fn with_dev<R>(&self, f: impl FnOnce(&mut IvshmemDevice) -> R) -> Result<R, String> {
        let dev = self.dev()?;
        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&mut d))
    }

    fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    fn doorbell(&self) -> bool {
        self.s.doorbell.is_some()
    }

    // ---- the model's derived state ----

    fn msix_enabled(&self) -> bool {
        self.doorbell() && self.shadow[CAP + 3] & 0x80 != 0
    }

    fn msix_fmask(&self) -> bool {
        self.doorbell() && self.shadow[CAP + 3] & 0x40 != 0
    }

    fn deliverable(&self, v: u16) -> bool {
        self.msix_enabled()
            && !self.msix_fmask()
            && self
                .entries
                .get(usize::from(v))
                .is_some_and(|e| !e.masked())
    }

    fn all_deliverable(&self) -> Vec<bool> {
        (0..self.vectors()).map(|v| self.deliverable(v)).collect()
    }

    fn decode(&self) -> bool {
        self.shadow[4] & 2 != 0
    }

    fn bar_addr(&self, bar: usize) -> Option<u64> {
        let (_, wide, _) = self.bars[bar]?;
        let reg = 0x10 + 4 * bar;
        let lo = u64::from(u32::from_le_bytes(
            self.shadow[reg..reg + 4].try_into().ok()?,
        ));
        let hi = if wide {
            u64::from(u32::from_le_bytes(
                self.shadow[reg + 4..reg + 8].try_into().ok()?,
            ))
        } else {
            0
        };
        Some((hi << 32 | lo) & !0xf)
    }

    fn bar_size(&self, bar: usize) -> u64 {
        self.bars[bar].map_or(0, |b| b.0)
    }

    /// Where a BAR may be mapped: not 0, below the physical address limit,
    /// clear of RAM.
    fn usable(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        let limit = 1u64 << layout::sane_phys_bits(self.s.phys_bits);
        addr != 0
            && end <= limit
            && layout::ram_regions(self.s.mem_size)
                .iter()
                .all(|(start, len)| end <= start.0 || addr >= start.0 + *len as u64)
    }

    fn want(&self, bar: usize) -> bool {
        self.decode()
            && self
                .bar_addr(bar)
                .is_some_and(|a| self.usable(a, self.bar_size(bar)))
    }

    /// After a model change to MSI-X state: vectors that became
    /// deliverable with their pending bit set are injected once.
    fn transitions(&mut self, before: &[bool]) {
        for v in 0..self.vectors() {
            let i = usize::from(v);
            if !before[i] && self.deliverable(v) && self.pending[i] {
                self.pending[i] = false;
                self.expected.push(self.entries[i].message());
            }
        }
    }

    // ---- operations ----

    fn apply(&mut self, op: &DevOp) -> Result<(), String> {
        match *op {
            DevOp::ConfigRead { offset, size } => self.config_read(offset, size),
            DevOp::ConfigWrite {
                offset,
                size,
                value,
            } => self.config_write(offset, size, value),
            DevOp::MmioRead { aim, offset, len } => {
                let addr = self.aim(aim, offset);
                self.guest_read(addr, usize::from(len))
            }
            DevOp::MmioWrite {
                aim,
                offset,
                len,
                value,
            } => {
                let addr = self.aim(aim, offset);
                let bytes = value.to_le_bytes();
                self.guest_write(addr, &bytes[..usize::from(len).min(8)])
            }
            DevOp::BarMove { bar, addr } => {
                let reg = 0x10 + 4 * u16::from(bar);
                self.config_write(reg, 4, addr as u32)?;
                if bar == 2 {
                    self.config_write(reg + 4, 4, (addr >> 32) as u32)?;
                }
                Ok(())
            }
            DevOp::Probe { reg } => self.probe(usize::from(reg)),
            DevOp::Decode(on) => {
                let cmd = u16::from_le_bytes([self.shadow[4], self.shadow[5]]);
                let cmd = if on { cmd | 2 } else { cmd & !2 };
                self.config_write(4, 2, u32::from(cmd))
            }
            DevOp::MsixControl { enable, fmask } => {
                let ctrl = u32::from(enable) << 15 | u32::from(fmask) << 14;
                self.config_write(CAP as u16 + 2, 2, ctrl)
            }
            DevOp::EntryMask { vector, masked } => {
                let addr = self.aim(Aim::Bar(1), u64::from(vector) * 16 + 12);
                self.guest_write(addr, &u32::from(masked).to_le_bytes())
            }
            DevOp::EntryMessage {
                vector,
                address,
                data,
            } => {
                let addr = self.aim(Aim::Bar(1), u64::from(vector) * 16);
                self.guest_write(addr, &address.to_le_bytes())?;
                self.guest_write(addr + 8, &data.to_le_bytes())
            }
            DevOp::PeerJoin { id, vector } => self.peer_join(id, vector),
            DevOp::PeerLeave { id } => {
                if !self.doorbell() {
                    return Ok(());
                }
                self.with_dev(|d| {
                    if d.interrupts_mut().is_some_and(|db| db.peer_left(id)) {
                        d.presence_changed();
                    }
                })?;
                if id != self.own_id && self.peers.remove(&id).is_some() {
                    return self.presence_changed();
                }
                Ok(())
            }
            DevOp::Ring { vector } => self.ring(vector),
            DevOp::Doorbell { id, vector } => {
                let addr = self.aim(Aim::Bar(0), 12);
                let value = u32::from(id) << 16 | u32::from(vector);
                self.guest_write(addr, &value.to_le_bytes())
            }
        }
    }

    fn aim(&self, aim: Aim, offset: u64) -> u64 {
        match aim {
            Aim::Abs(a) => a.wrapping_add(offset),
            Aim::Bar(b) => self
                .bar_addr(usize::from(b))
                .unwrap_or(0xdead_0000)
                .wrapping_add(offset),
        }
    }

    fn config_read(&mut self, offset: u16, size: u8) -> Result<(), String> {
        let got = self.with_dev(|d| d.config_read(offset, size))?;
        let valid = matches!(size, 1 | 2 | 4) && offset % 4 + u16::from(size) <= 4 && offset < 4096;
        let want = if !valid {
            u32::MAX
        } else if offset >= 256 {
            0
        } else {
            let mut b = [0u8; 4];
            let o = usize::from(offset);
            b[..usize::from(size)].copy_from_slice(&self.shadow[o..o + usize::from(size)]);
            u32::from_le_bytes(b)
        };
        if got != want {
            return err(format!(
                "config read {offset:#x}/{size} = {got:#x}, expected {want:#x}"
            ));
        }
        Ok(())
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) -> Result<(), String> {
        let before = self.all_deliverable();
        self.with_dev(|d| d.config_write(offset, size, value))?;
        let valid = matches!(size, 1 | 2 | 4) && offset % 4 + u16::from(size) <= 4 && offset < 256;
        if valid {
            for (i, b) in (usize::from(offset)..)
                .zip(value.to_le_bytes())
                .take(usize::from(size))
            {
                let kept = self.shadow[i] & !self.wmask[i];
                self.shadow[i] = (kept | (b & self.wmask[i])) & !(b & self.w1c[i]);
            }
        }
        self.transitions(&before);
        Ok(())
    }

    fn probe(&mut self, reg: usize) -> Result<(), String> {
        let off = 0x10 + 4 * reg as u16;
        self.config_write(off, 4, u32::MAX)?;
        let got = self.with_dev(|d| d.config_read(off, 4))?;
        // The lower register of a BAR, or the upper half of a 64-bit one.
        let want = match (
            self.bars[reg],
            reg.checked_sub(1).and_then(|r| self.bars[r]),
        ) {
            (Some((size, wide, pf)), _) => {
                (!(size - 1) as u32 & !0xf) | if wide { 4 } else { 0 } | if pf { 8 } else { 0 }
            }
            (None, Some((size, true, _))) => (!(size - 1) >> 32) as u32,
            _ => 0,
        };
        if got != want {
            return err(format!(
                "sizing probe of BAR register {reg} read {got:#x}, expected {want:#x}"
            ));
        }
        Ok(())
    }

    fn peer_join(&mut self, id: u16, vector: u16) -> Result<(), String> {
        if !self.doorbell() {
            return Ok(());
        }
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let entry = OwnFd {
            raw: fd.as_raw_fd(),
            clone: fd.try_clone().map_err(|e| e.to_string())?,
        };
        self.with_dev(|d| {
            if d.interrupts_mut()
                .is_some_and(|db| db.peer_joined(id, vector, fd))
            {
                d.presence_changed();
            }
        })?;
        if id != self.own_id {
            let before = self.peer_vectors(id);
            self.peers.entry(id).or_default().insert(vector, entry);
            if self.peer_vectors(id) != before {
                return self.presence_changed();
            }
        }
        Ok(())
    }

    /// How many vectors of peer `id` a guest sees: up to the highest announced.
    fn peer_vectors(&self, id: u16) -> u16 {
        self.peers
            .get(&id)
            .and_then(|v| v.keys().next_back())
            .map_or(0, |&max| max + 1)
    }

    /// What the guest sees of the peers changed: the generation moves and,
    /// if the guest asked for it, the device rang our notification vector.
    fn presence_changed(&mut self) -> Result<(), String> {
        self.pr_generation = self.pr_generation.wrapping_add(1).max(1);
        if self.pr_notify & (1 << 31) == 0 {
            return Ok(());
        }
        let v = self.pr_notify as u16;
        if usize::from(v) < self.own.len() {
            self.after_ring(v)?;
        }
        Ok(())
    }

    /// The presence registers (BAR0 from 0x80), from the spec.
    fn presence_expected(&self, off: u64) -> u32 {
        let next = |from: u32| {
            u16::try_from(from)
                .ok()
                .and_then(|from| self.peers.range(from..).map(|(id, _)| *id).next())
                .map_or(u32::MAX, u32::from)
        };
        match off {
            0x80 => u32::from_le_bytes(*b"IVPR"),
            0x84 => 1,
            0x88 => self.pr_generation,
            0x8c => 1,
            0x90 => u32::from(self.own_id),
            0x94 => self.peers.len() as u32,
            0x98 => self.pr_select,
            0x9c => next(self.pr_select),
            0xa0 => u16::try_from(self.pr_select).map_or(0, |id| u32::from(self.peer_vectors(id))),
            0xa4 => self.pr_notify,
            _ => 0,
        }
    }

    /// Someone wrote our vector `v`'s eventfd: KVM delivers it through the
    /// irqfd, or the event loop (which watches the unattached ones) hands
    /// it to the device.
    fn ring(&mut self, v: u16) -> Result<(), String> {
        let Some(own) = self.own.get(usize::from(v)) else {
            return Ok(());
        };
        own.clone.write(1).map_err(|e| e.to_string())?;
        self.after_ring(v)
    }

    /// Our vector `v`'s eventfd was written (by a peer, by us through a
    /// doorbell, or by the device's presence notification): KVM delivers it
    /// through the irqfd, or the event loop hands it to the device.
    fn after_ring(&mut self, v: u16) -> Result<(), String> {
        let Some(own) = self.own.get(usize::from(v)) else {
            return Ok(());
        };
        let raw = own.raw;
        if self.fake.eventfd_written(raw) {
            let _ = own.clone.read();
        } else {
            let watched = self.with_dev(|d| {
                d.interrupts_mut()
                    .is_some_and(|db| db.watched_fds().iter().any(|&(w, fd)| w == v && fd == raw))
            })?;
            if watched {
                self.with_dev(|d| d.vector_event(v))?;
            }
        }
        self.rung.push(v);
        let i = usize::from(v);
        if self.deliverable(v) {
            self.expected.push(self.entries[i].message());
        } else {
            self.pending[i] = true;
        }
        Ok(())
    }

    /// In a memory slot (RAM or BAR2): memory, not an MMIO exit.
    fn in_slot(&self, addr: u64, len: usize) -> bool {
        let end = addr.saturating_add(len as u64);
        self.fake
            .lock()
            .slots
            .values()
            .any(|s| addr < s.gpa + s.size && s.gpa < end)
    }

    /// The BAR (0 or 1) the device says covers the whole access, and the
    /// offset in it.
    fn covering(&self, addr: u64, len: usize) -> Result<Option<(usize, u64)>, String> {
        let mapped = self.with_dev(|d| [d.mapped_at(0), d.mapped_at(1)])?;
        for (bar, at) in mapped.into_iter().enumerate() {
            let Some(at) = at else { continue };
            let size = self.bar_size(bar);
            if addr >= at && addr.checked_add(len as u64).is_some_and(|e| e <= at + size) {
                return Ok(Some((bar, addr - at)));
            }
        }
        Ok(None)
    }

    fn guest_write(&mut self, addr: u64, data: &[u8]) -> Result<(), String> {
        if self.in_slot(addr, data.len()) {
            return Ok(());
        }
        if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            let value = u32::from_le_bytes(bytes);
            if let Some(fd) = self.fake.ioevent_match(addr, value) {
                return self.ioevent_fired(fd, value);
            }
        }
        let cover = self.covering(addr, data.len())?;
        let before = self.all_deliverable();
        let routed = self.mmio.write(addr, data);
        if routed != cover.is_some() {
            return err(format!(
                "write {addr:#x}/{}: bus routed it: {routed}, a mapped BAR covers it: {cover:?}",
                data.len()
            ));
        }
        match cover {
            Some((0, off)) if data.len() == 4 => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                match off {
                    0 => self.intrmask = value,
                    4 => self.intrstatus = value,
                    0x98 if self.doorbell() => self.pr_select = value,
                    0xa4 if self.doorbell() => self.pr_notify = value & (1 << 31 | 0xffff),
                    _ => {}
                }
            }
            Some((1, off)) if off < MSIX_PBA_OFFSET => {
                let ok = matches!((data.len(), off % 8), (4, 0 | 4) | (8, 0));
                if ok {
                    for (i, chunk) in data.chunks_exact(4).enumerate() {
                        let o = off + 4 * i as u64;
                        let dword = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                        if let Some(e) = self.entries.get_mut((o / 16) as usize) {
                            let field = (o % 16 / 4) as usize;
                            e.dwords[field] = if field == 3 { dword & 1 } else { dword };
                        }
                    }
                }
            }
            _ => {}
        }
        self.transitions(&before);
        Ok(())
    }

    /// KVM matched a doorbell write: it signals the fd, never exiting.
    fn ioevent_fired(&mut self, fd: RawFd, value: u32) -> Result<(), String> {
        let (id, vector) = ((value >> 16) as u16, value as u16);
        if id == self.own_id {
            if usize::from(vector) >= self.own.len() {
                return err(format!(
                    "doorbell {value:#x} hit fd {fd}: we have no such vector"
                ));
            }
            return self.ring(vector);
        }
        let Some(peer) = self.peers.get(&id).and_then(|p| p.get(&vector)) else {
            return err(format!(
                "doorbell {value:#x} matched fd {fd} for an unknown peer"
            ));
        };
        if peer.raw != fd {
            return err(format!(
                "doorbell {value:#x} hit fd {fd}, not peer {id}'s vector {vector}"
            ));
        }
        peer.clone.write(1).map_err(|e| e.to_string())?;
        match peer.clone.read() {
            Ok(1) => Ok(()),
            other => err(format!("peer {id} vector {vector}'s eventfd: {other:?}")),
        }
    }

    fn guest_read(&mut self, addr: u64, len: usize) -> Result<(), String> {
        if self.in_slot(addr, len) {
            return Ok(());
        }
        let cover = self.covering(addr, len)?;
        let mut data = vec![0xa5u8; len];
        let routed = self.mmio.read(addr, &mut data);
        if routed != cover.is_some() {
            return err(format!(
                "read {addr:#x}/{len}: bus routed it: {routed}, a mapped BAR covers it: {cover:?}"
            ));
        }
        let Some((bar, off)) = cover else {
            return Ok(());
        };
        let mut want = vec![0u8; len];
        if bar == 0 {
            let value = match (off, len) {
                (0, 4) => Some(self.intrmask),
                (4, 4) => Some(std::mem::take(&mut self.intrstatus)),
                (8, 4) => Some(u32::from(self.own_id)),
                (0x80.., 4) if self.doorbell() && off % 4 == 0 => Some(self.presence_expected(off)),
                _ => None,
            };
            if let Some(v) = value {
                want.copy_from_slice(&v.to_le_bytes());
            }
        } else {
            want = self.bar1_expected(off, len);
        }
        if data != want {
            return err(format!(
                "read BAR{bar}+{off:#x}/{len} = {data:02x?}, expected {want:02x?}"
            ));
        }
        Ok(())
    }

    /// BAR1 as the model holds it: the table below the PBA, the PBA above.
    fn bar1_expected(&self, off: u64, len: usize) -> Vec<u8> {
        let mut want = vec![0u8; len];
        let aligned = matches!((len, off % 8), (4, 0 | 4) | (8, 0));
        if !aligned {
            return want;
        }
        if off < MSIX_PBA_OFFSET {
            for (i, chunk) in want.chunks_exact_mut(4).enumerate() {
                let o = off + 4 * i as u64;
                let dword = self
                    .entries
                    .get((o / 16) as usize)
                    .map_or(0, |e| e.dwords[(o % 16 / 4) as usize]);
                chunk.copy_from_slice(&dword.to_le_bytes());
            }
        } else {
            let pba_off = off - MSIX_PBA_OFFSET;
            let words = self.pending.len().div_ceil(64) as u64;
            if pba_off / 8 < words {
                let mut q = 0u64;
                for b in 0..64 {
                    if self.pending.get((pba_off / 8 * 64 + b) as usize) == Some(&true) {
                        q |= 1 << b;
                    }
                }
                let start = (pba_off % 8) as usize;
                want.copy_from_slice(&q.to_le_bytes()[start..start + len]);
            }
        }
        want
    }

    // ---- invariants after every step ----

    fn check(&mut self) -> Result<(), String> {
        self.check_config()?;
        self.check_msix()?;
        self.check_kvm()
    }

    fn check_config(&self) -> Result<(), String> {
        let dev = self.dev()?;
        let mut d = dev.lock().unwrap_or_else(|e| e.into_inner());
        for off in (0..256u16).step_by(4) {
            let got = d.config_read(off, 4).to_le_bytes();
            let o = usize::from(off);
            if got[..] != self.shadow[o..o + 4] {
                return err(format!(
                    "config dword {off:#x} reads {:08x}, the write masks give {:08x}",
                    u32::from_le_bytes(got),
                    u32::from_le_bytes(self.shadow[o..o + 4].try_into().unwrap_or_default())
                ));
            }
        }
        // The capability list ends, each entry dword aligned in 0x40..0x100.
        if d.config_read(6, 2) & 0x10 != 0 {
            let mut at = d.config_read(0x34, 1) & 0xfc;
            let mut hops = 0;
            while at != 0 {
                hops += 1;
                if !(0x40..0x100).contains(&at) || hops > 48 {
                    return err(format!("capability list runs to {at:#x} after {hops} hops"));
                }
                at = d.config_read(at as u16 + 1, 1) & 0xfc;
            }
        }
        Ok(())
    }

    fn check_msix(&self) -> Result<(), String> {
        if !self.doorbell() {
            return Ok(());
        }
        let dev = self.dev()?;
        let d = dev.lock().unwrap_or_else(|e| e.into_inner());
        let Some(msix) = d.msix() else {
            return err("a doorbell device without MSI-X state");
        };
        if msix.enabled() != self.msix_enabled() || msix.function_masked() != self.msix_fmask() {
            return err(format!(
                "MSI-X state enabled={} fmask={} but Message Control says {} {}",
                msix.enabled(),
                msix.function_masked(),
                self.msix_enabled(),
                self.msix_fmask()
            ));
        }
        for v in 0..self.vectors() {
            let i = usize::from(v);
            let mut got = [0u8; 16];
            msix.read_table(u64::from(v) * 16, &mut got[..8]);
            msix.read_table(u64::from(v) * 16 + 8, &mut got[8..]);
            let want: Vec<u8> = self.entries[i]
                .dwords
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            if got[..] != want[..] {
                return err(format!(
                    "MSI-X entry {v} reads {got:02x?}, expected {want:02x?}"
                ));
            }
            if self.deliverable(v) && self.pending[i] {
                return err(format!("vector {v} deliverable with its pending bit set"));
            }
        }
        for q in 0..self.pending.len().div_ceil(64) as u64 {
            let mut got = [0u8; 8];
            msix.read_pba(q * 8, &mut got);
            let want = self.bar1_expected(MSIX_PBA_OFFSET + q * 8, 8);
            if got[..] != want[..] {
                return err(format!(
                    "PBA qword {q} reads {got:02x?}, expected {want:02x?}"
                ));
            }
        }
        Ok(())
    }

    fn check_kvm(&mut self) -> Result<(), String> {
        let (mapped, watched) = self.with_dev(|d| {
            let mapped = [d.mapped_at(0), d.mapped_at(1), d.mapped_at(2)];
            let watched: Vec<(u16, RawFd)> = d
                .interrupts_mut()
                .map(|db| db.watched_fds())
                .unwrap_or_default();
            (mapped, watched)
        })?;
        // Each BAR is mapped where it is programmed, iff decode is on and
        // the address usable; BAR0 and BAR1 only miss that if they overlap
        // each other (the bus takes one of them).
        for bar in 0..3 {
            let (want, addr) = (self.want(bar), self.bar_addr(bar));
            match mapped[bar] {
                Some(at) if Some(at) != addr || !want => {
                    return err(format!(
                        "BAR{bar} mapped at {at:#x}, programmed {addr:x?}, decode {} usable {want}",
                        self.decode()
                    ))
                }
                None if want => {
                    let other = 1 - bar.min(1);
                    let clash = bar < 2
                        && mapped[other].is_some_and(|o| {
                            let a = addr.unwrap_or(0);
                            a < o + self.bar_size(other) && o < a + self.bar_size(bar)
                        });
                    if !clash {
                        return err(format!("BAR{bar} at {addr:x?} should be mapped, is not"));
                    }
                }
                _ => {}
            }
        }
        let fake = self.fake.lock();
        if let Some(why) = fake.refused.first() {
            return err(format!("KVM would refuse: {why}"));
        }
        let slot = fake.slots.get(&BAR2_SLOT).copied();
        let want_slot = mapped[2].map(|gpa| crate::vm_ops::fake::Slot {
            gpa,
            size: self.s.bar2_backed,
            host: self.host_addr,
        });
        if slot != want_slot {
            return err(format!("BAR2 slot is {slot:x?}, expected {want_slot:x?}"));
        }
        // Our own doorbells ring a clone of our eventfd (its number is the
        // device's), so only their presence is compared.
        let mut want_io: BTreeMap<(u64, u32), Option<RawFd>> = BTreeMap::new();
        if let Some(a) = mapped[0].filter(|_| self.doorbell()) {
            for v in 0..self.own.len() {
                want_io.insert((a + 12, u32::from(self.own_id) << 16 | v as u32), None);
            }
            for (id, vs) in &self.peers {
                for (v, o) in vs {
                    want_io.insert((a + 12, u32::from(*id) << 16 | u32::from(*v)), Some(o.raw));
                }
            }
        }
        let io_ok = fake.ioeventfds.len() == want_io.len()
            && fake
                .ioeventfds
                .iter()
                .all(|(k, fd)| want_io.get(k).is_some_and(|w| w.is_none_or(|w| w == *fd)));
        if !io_ok {
            return err(format!(
                "ioeventfds {:x?}, expected {want_io:x?} (BAR0 mapped at {:x?})",
                fake.ioeventfds, mapped[0]
            ));
        }
        if self.budget.used() != want_io.len() {
            return err(format!(
                "ioeventfd budget says {} used, {} registered",
                self.budget.used(),
                want_io.len()
            ));
        }
        // irqfds and routes: attached with the current message iff deliverable.
        let mut attached = 0;
        for v in 0..self.vectors() {
            let o = &self.own[usize::from(v)];
            let gsi = fake.irqfds.get(&o.raw).copied();
            let deliverable = self.deliverable(v);
            if gsi.is_some() != deliverable {
                return err(format!(
                    "vector {v}: irqfd attached {} but deliverable {deliverable}",
                    gsi.is_some()
                ));
            }
            if let Some(gsi) = gsi {
                attached += 1;
                let msg = self.entries[usize::from(v)].message();
                if fake.msi_route(gsi) != Some(msg) {
                    return err(format!(
                        "vector {v}: route of GSI {gsi} is {:x?}, the entry says {msg:x?}",
                        fake.msi_route(gsi)
                    ));
                }
            }
            let is_watched = watched.iter().any(|&(w, fd)| w == v && fd == o.raw);
            if is_watched == gsi.is_some() {
                return err(format!(
                    "vector {v}: watched by the event loop {is_watched}, irqfd {}",
                    gsi.is_some()
                ));
            }
        }
        if fake.irqfds.len() != attached {
            return err(format!("{} irqfds, {attached} expected", fake.irqfds.len()));
        }
        if fake.commits != self.commits_seen {
            self.commits_seen = fake.commits;
            let legacy = fake
                .routes
                .as_ref()
                .map_or(0, |r| r.iter().filter(|e| e.gsi < 24).count());
            if legacy != 40 {
                return err(format!(
                    "a routing commit has {legacy} legacy routes, not 40"
                ));
            }
        }
        // Deliveries: exactly the expected ones, in any order.
        let mut got: Vec<(u64, u32)> = fake.delivered[self.delivered_seen..]
            .iter()
            .map(|d| (d.msg.address, d.msg.data))
            .collect();
        let mut want: Vec<(u64, u32)> = self.expected.iter().map(|m| (m.address, m.data)).collect();
        got.sort_unstable();
        want.sort_unstable();
        if got != want {
            return err(format!(
                "delivered {got:x?}, expected {want:x?} (a vector delivered while masked, lost, or twice)"
            ));
        }
        self.delivered_seen = fake.delivered.len();
        self.expected.clear();
        drop(fake);
        // Nothing is left waiting on the eventfds rung.
        for v in std::mem::take(&mut self.rung) {
            if self.own[usize::from(v)].clone.read().is_ok() {
                return err(format!(
                    "vector {v}'s event was neither delivered nor made pending"
                ));
            }
        }
        Ok(())
    }

    /// Drops the device: all it gave KVM goes.
    fn finish(&mut self) -> Result<(), String> {
        self.dev = None;
        let fake = self.fake.lock();
        let ram = layout::ram_regions(self.s.mem_size).len();
        if fake.slots.len() != ram || !fake.ioeventfds.is_empty() || !fake.irqfds.is_empty() {
            return err(format!(
                "left behind: slots {:x?}, ioeventfds {:x?}, irqfds {:?}",
                fake.slots, fake.ioeventfds, fake.irqfds
            ));
        }
        if self.budget.used() != 0 {
            return err(format!("ioeventfd budget still {}", self.budget.used()));
        }
        if self.irq.entries().len() != 40 {
            return err(format!(
                "{} routes left in the table",
                self.irq.entries().len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{execute_caught, run};

    #[test]
    fn the_real_device_passes_a_short_run() {
        let t = DeviceTarget {
            sabotage: Sabotage::None,
        };
        let out = run(&t, 1, 20_000, 400);
        assert_eq!(out.failures, 0, "{}", out.report.unwrap_or_default());
    }

    fn doorbell_setup() -> DeviceSetup {
        DeviceSetup {
            mem_size: 64 << 20,
            phys_bits: 40,
            bar2_size: 1 << 20,
            bar2_backed: 1 << 20,
            doorbell: Some((3, 2)),
        }
    }

    #[test]
    fn a_masked_vector_delivered_fails_the_checks() {
        // Enable, unmask (irqfd attached), mask (the sabotaged fake keeps
        // it attached), ring: the masked vector is delivered.
        let ops = [
            DevOp::MsixControl {
                enable: true,
                fmask: false,
            },
            DevOp::EntryMask {
                vector: 0,
                masked: false,
            },
            DevOp::EntryMask {
                vector: 0,
                masked: true,
            },
            DevOp::Ring { vector: 0 },
        ];
        let good = DeviceTarget {
            sabotage: Sabotage::None,
        };
        assert_eq!(execute_caught(&good, &doorbell_setup(), &ops), Ok(()));
        let bad = DeviceTarget {
            sabotage: Sabotage::KeepIrqfds,
        };
        let f = execute_caught(&bad, &doorbell_setup(), &ops).unwrap_err();
        assert_eq!(f.step, 2, "{f:?}");
        assert!(
            f.what.contains("irqfd attached true but deliverable false"),
            "{f:?}"
        );
    }

    #[test]
    fn random_runs_find_sabotage_and_shrink_it() {
        for (sabotage, words) in [
            (Sabotage::KeepIrqfds, "irqfd"),
            (Sabotage::KeepSlots, "slot"),
        ] {
            let out = run(&DeviceTarget { sabotage }, 7, 200_000, 400);
            assert_eq!(out.failures, 1, "{sabotage:?} went unnoticed");
            let report = out.report.unwrap();
            assert!(report.contains(words), "{report}");
            let len: usize = report
                .split("sequence (")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap();
            assert!(len <= 6, "not shrunk: {report}");
        }
    }

    #[test]
    fn the_delivery_check_itself_catches_an_extra_msi() {
        // Nothing sabotaged in the device: an MSI appears that nothing
        // asked for (as a device that injects a masked vector would).
        let setup = doorbell_setup();
        let mut run = Run::new(&setup, Sabotage::None).unwrap();
        run.check().unwrap();
        run.apply(&DevOp::Ring { vector: 1 }).unwrap();
        run.check().unwrap();
        run.fake
            .signal_msi(kvm_msi {
                address_lo: 0,
                data: 0,
                ..Default::default()
            })
            .unwrap();
        let e = run.check().unwrap_err();
        assert!(e.contains("delivered while masked"), "{e}");
    }
}
