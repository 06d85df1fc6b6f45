// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The ivshmem PCI device (1af4:1110) as QEMU's guests see it.
//!
//! - plain (`--shm`, `--shm-path`): BAR0 registers and BAR2 shared memory,
//!   no capabilities, IVPOSITION 0 — QEMU's `ivshmem-plain`;
//! - doorbell (`--server`): BAR1 MSI-X as well, IVPOSITION = our peer id,
//!   doorbells through KVM ioeventfds and interrupts through irqfds —
//!   QEMU's `ivshmem-doorbell`.
//!
//! BAR2 is a KVM memory slot pointing at the `MAP_SHARED` mapping, so guest
//! accesses to shared memory never exit to the VMM.

pub mod backing;
pub mod bar0;
pub mod device;
pub mod interrupts;
pub mod presence;
pub mod rejoin;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::MutEventSubscriber;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::{self, Mmio32Allocator, Mmio64Allocator};
use crate::bus::Bus;
use crate::config::size::format_size;
use crate::config::IvshmemBacking;
use crate::devices::pci::config::{BarKind, ConfigError, PciConfig, PciIds, COMMAND_MEMORY};
use crate::devices::pci::msix::{msix_capability, MsixError, MsixState, MSIX_CAP_ID};
use crate::irq::{IrqError, IrqRouting};
use crate::protocol::{self, HandshakeError, PeerConnection};
use crate::sandbox::SeccompMode;
use crate::shm::ShmIdentity;
use crate::shm::{ShmBackend, ShmError};
use crate::stop::VmStop;
use crate::vm_ops::VmOps;
use backing::BackingWatch;
use bar0::BAR0_SIZE;
pub use device::MAX_VECTORS;
use device::{DeviceParts, IvshmemDevice, BAR1_SIZE, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET};
use interrupts::{Interrupts, IoeventfdBudget};
use presence::PeerSet;
use rejoin::{RejoinTarget, Rejoiner};
use watch::WatchParts;

/// The ids QEMU gives ivshmem: Red Hat's vendor id, class "RAM memory",
/// revision 1, and QEMU's default subsystem ids.
pub const IVSHMEM_IDS: PciIds = PciIds {
    vendor: 0x1af4,
    device: 0x1110,
    revision: 1,
    class: 0x05_00_00,
    subsys_vendor: 0x1af4,
    subsys_id: 0x1100,
    header_type: 0,
};

/// How long the handshake with a server may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum IvshmemError {
    #[error("ivshmem{index}: {source}")]
    Memory { index: usize, source: ShmError },
    #[error("ivshmem{index}: {source}")]
    Handshake {
        index: usize,
        source: HandshakeError,
    },
    #[error("ivshmem{index}: the server's shared memory is {shm} but this device's BAR is {bar}: restart the server with -l {bar} or ask for size={shm}")]
    ShmSmaller {
        index: usize,
        shm: String,
        bar: String,
    },
    #[error("ivshmem{index}: the server's shared memory is {0} bytes, not a multiple of 4096: restart the server with a power-of-two size", .size)]
    ShmNotPageMultiple { index: usize, size: u64 },
    #[error("ivshmem{index}: no room for a {size} BAR below the guest's {bits}-bit physical address limit: use a smaller size or less --mem")]
    NoBarSpace {
        index: usize,
        size: String,
        bits: u8,
    },
    #[error(
        "ivshmem{index}: no room for its registers in the 32-bit MMIO window: use fewer devices"
    )]
    NoMmio32 { index: usize },
    #[error("ivshmem{index}: configuration space: {0}", .source)]
    Config { index: usize, source: ConfigError },
    #[error("ivshmem{index}: MSI-X: {0}", .source)]
    Msix { index: usize, source: MsixError },
    #[error("ivshmem{index}: interrupts: {0}", .source)]
    Irq { index: usize, source: IrqError },
    #[error("ivshmem{index}: starting the rejoin thread failed: {err}; use rejoin=off (--no-rejoin) to go without")]
    Rejoin { index: usize, err: std::io::Error },
}

impl IvshmemError {
    /// Usage-type errors (the size asked for can't work) are 2, the rest 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            IvshmemError::Memory {
                source: ShmError::InvalidName { .. } | ShmError::BadSize(_),
                ..
            } => 2,
            _ => 1,
        }
    }
}

/// What every ivshmem device of a VM shares.
#[derive(Clone)]
pub struct IvshmemEnv {
    /// The VM's KVM calls (a `VmFd`; a recording fake in tests).
    pub vm: Arc<dyn VmOps>,
    pub mmio: Arc<Bus>,
    /// Where BAR2's range goes: under its memory slot and under every
    /// other BAR (see vcpu::VcpuContext::mmio_under).
    pub mmio_under: Arc<Bus>,
    pub irq: Arc<IrqRouting>,
    pub mem_size: u64,
    /// Guest physical address bits (CPUID 0x80000008).
    pub phys_bits: u8,
    pub budget: Arc<IoeventfdBudget>,
    /// The sandbox mode for the threads devices start (rejoin).
    pub seccomp: SeccompMode,
    /// The VM's stop signal: long guest-triggered work (re-registering
    /// every doorbell after a BAR0 move, syncing every vector) gives up
    /// once the VM is stopping, so a stop never waits for it.
    pub stop: Arc<VmStop>,
}

impl IvshmemEnv {
    /// Whether a BAR of `size` at `addr` can be mapped: not zero, inside
    /// the guest's physical address space and clear of guest RAM. (A sizing
    /// probe's all-ones value fails this, so probes never map anything.)
    pub fn bar_address_usable(&self, addr: u64, size: u64) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        let limit = 1u64 << layout::sane_phys_bits(self.phys_bits);
        addr != 0
            && end <= limit
            && layout::ram_regions(self.mem_size)
                .iter()
                .all(|(start, len)| end <= start.0 || addr >= start.0 + *len as u64)
    }
}

/// Hands out BAR addresses and KVM memory slots to devices as they are built.
pub struct BarAllocator {
    mmio32: Mmio32Allocator,
    mmio64: Mmio64Allocator,
    next_slot: u32,
    phys_bits: u8,
}

impl BarAllocator {
    /// `first_slot`: the first KVM slot number not used by RAM.
    pub fn new(mem_size: u64, phys_bits: u8, first_slot: u32) -> Self {
        BarAllocator {
            mmio32: Mmio32Allocator::new(),
            mmio64: Mmio64Allocator::new(layout::mmio64_window(mem_size, phys_bits)),
            next_slot: first_slot,
            phys_bits,
        }
    }

    fn take_slot(&mut self) -> u32 {
        let slot = self.next_slot;
        self.next_slot += 1;
        slot
    }
}

/// A built ivshmem device, as the VMM holds it.
pub struct Ivshmem {
    index: usize,
    function: Arc<Mutex<IvshmemDevice>>,
    subscriber: Option<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    backing_watch: Option<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    backend: ShmBackend,
}

/// What joining a server gave a doorbell device.
struct Joined {
    conn: PeerConnection,
    socket: PathBuf,
    vectors: u16,
    /// The memory a rejoined server must offer again, and how we joined;
    /// None: no rejoining.
    rejoin: Option<(ShmIdentity, protocol::ConnectOptions)>,
    id: u16,
    own: Vec<EventFd>,
    peers: BTreeMap<u16, Vec<EventFd>>,
}

impl Ivshmem {
    /// Opens the backing (or joins the server), lays out the BARs and
    /// builds the PCI function; a doorbell device also gets MSI-X and its
    /// interrupts. On error nothing is left behind: shared memory created
    /// here is removed when `backend` drops.
    pub fn new(
        index: usize,
        backing: &IvshmemBacking,
        env: &IvshmemEnv,
        alloc: &mut BarAllocator,
    ) -> Result<Self, IvshmemError> {
        let (backend, bar2_size, joined) = open_backing(index, backing)?;
        let mapping = backend
            .map()
            .map_err(|source| IvshmemError::Memory { index, source })?;
        // The guest sees at most the BAR of it (a server's object may be
        // larger than the size asked for) and at least... what exists.
        let bar2_backed = (mapping.len() as u64).min(bar2_size);
        let bar2 = alloc
            .mmio64
            .alloc(bar2_size)
            .ok_or(IvshmemError::NoBarSpace {
                index,
                size: format_size(bar2_size),
                bits: alloc.phys_bits,
            })?;
        let mut parts = DeviceParts {
            index,
            config: plain_config(index, alloc, bar2, bar2_size)?,
            env: env.clone(),
            mapping,
            bar2_backed,
            bar2_slot: alloc.take_slot(),
            msix: None,
            interrupts: None,
        };
        let watch = match joined {
            Some(joined) => Some(add_doorbell(&mut parts, joined, alloc)?),
            None => None,
        };
        let function = IvshmemDevice::create(parts);
        let subscriber = watch.map(|watch| {
            Arc::new(Mutex::new(watch.attach(function.clone())))
                as Arc<Mutex<dyn MutEventSubscriber + Send>>
        });
        let backing_watch = BackingWatch::new(index, &backend, bar2_backed, function.clone())
            .map(|w| Arc::new(Mutex::new(w)) as Arc<Mutex<dyn MutEventSubscriber + Send>>);
        log::info!(
            "ivshmem{index}: {} ({}) at BAR2 {bar2:#x}",
            backend.describe(),
            format_size(bar2_size)
        );
        Ok(Ivshmem {
            index,
            function,
            subscriber,
            backing_watch,
            backend,
        })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The PCI function to put on the bus.
    pub fn function(&self) -> Arc<Mutex<dyn crate::devices::pci::root::PciFunction>> {
        self.function.clone()
    }

    /// The event-loop subscriber (doorbell devices only).
    pub fn subscriber(&self) -> Option<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.subscriber.clone()
    }

    /// The event-loop subscriber that notices the shared memory shrinking.
    pub fn backing_watch(&self) -> Option<Arc<Mutex<dyn MutEventSubscriber + Send>>> {
        self.backing_watch.clone()
    }

    /// Start-up succeeded: shared memory we created stays after we exit.
    pub fn keep_backing(&mut self) {
        self.backend.keep();
    }

    /// Counters for `--stats`.
    pub fn stats(&self) -> Vec<(String, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let dev = self.function.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        match &dev.interrupts {
            Some(db) => {
                let s = &db.stats;
                out.push(("id".to_string(), u64::from(db.own_id())));
                out.push(("peers".to_string(), db.peer_ids().len() as u64));
                out.push(("doorbell_unmatched".to_string(), s.unmatched.load(Relaxed)));
                out.push(("masked_events".to_string(), s.masked_events.load(Relaxed)));
                out.push((
                    "pending_injected".to_string(),
                    s.pending_injected.load(Relaxed),
                ));
                out.push(("peers_joined".to_string(), s.peers_joined.load(Relaxed)));
                out.push(("peers_left".to_string(), s.peers_left.load(Relaxed)));
                out.push(("over_budget".to_string(), s.over_budget.load(Relaxed)));
            }
            None => out.push(("plain_doorbells".to_string(), dev.plain_doorbells())),
        }
        out
    }
}

/// The shared memory behind BAR2 and BAR2's size: an object we open or
/// create, or — for a doorbell device — what the server's handshake gives.
fn open_backing(
    index: usize,
    backing: &IvshmemBacking,
) -> Result<(ShmBackend, u64, Option<Joined>), IvshmemError> {
    let mem_err = |source| IvshmemError::Memory { index, source };
    let (socket, vectors, size, server_uid, rejoin) = match backing {
        IvshmemBacking::Memory {
            source,
            size,
            trust,
        } => {
            let backend = ShmBackend::open_with(source, *size, *trust);
            return Ok((backend.map_err(mem_err)?, *size, None));
        }
        IvshmemBacking::Server {
            socket,
            vectors,
            size,
            server_uid,
            rejoin,
        } => (socket, *vectors, *size, *server_uid, *rejoin),
    };
    let mut opts = protocol::ConnectOptions::new(vectors, HANDSHAKE_TIMEOUT);
    opts.server_uid = server_uid;
    let (conn, hs) = protocol::connect_with(socket, &opts)
        .map_err(|source| IvshmemError::Handshake { index, source })?;
    let shm = hs.shm.size();
    if shm % 4096 != 0 {
        return Err(IvshmemError::ShmNotPageMultiple { index, size: shm });
    }
    let bar = match size {
        Some(bar) if bar > shm => {
            return Err(IvshmemError::ShmSmaller {
                index,
                shm: format_size(shm),
                bar: format_size(bar),
            })
        }
        Some(bar) => bar,
        // A server's size need not be a power of two (QEMU's device aborts
        // then); round the BAR up, the tail unbacked.
        None => shm.checked_next_power_of_two().unwrap_or(shm),
    };
    // A rejoined server must give the vectors this device got, which are
    // fewer than it asked for where the server's -n is smaller: ask for
    // those (and compare with them, rejoin::refusal).
    let held = u16::try_from(hs.own.len()).unwrap_or(opts.vectors);
    let rejoin = rejoin.then(|| hs.shm.identity()).flatten().map(|memory| {
        let mut again = opts.clone();
        again.vectors = held;
        (memory, again)
    });
    let joined = Joined {
        conn,
        socket: socket.clone(),
        vectors,
        rejoin,
        id: hs.id,
        own: hs.own,
        peers: hs.peers,
    };
    Ok((hs.shm, bar, Some(joined)))
}

/// Configuration space of ivshmem-plain: the ids, BAR0 (registers) and
/// BAR2 (shared memory, 64-bit prefetchable), memory decoding on.
fn plain_config(
    index: usize,
    alloc: &mut BarAllocator,
    bar2: u64,
    bar2_size: u64,
) -> Result<PciConfig, IvshmemError> {
    let cfg_err = |source| IvshmemError::Config { index, source };
    let bar0 = alloc
        .mmio32
        .alloc(BAR0_SIZE, BAR0_SIZE)
        .ok_or(IvshmemError::NoMmio32 { index })?;
    let mut config = PciConfig::new(IVSHMEM_IDS);
    let mem32 = BarKind::Mem32 {
        prefetchable: false,
    };
    config.add_bar(0, BAR0_SIZE, mem32, bar0).map_err(cfg_err)?;
    config
        .add_bar(2, bar2_size, BarKind::Mem64 { prefetchable: true }, bar2)
        .map_err(cfg_err)?;
    config.set_initial_command(COMMAND_MEMORY);
    Ok(config)
}

/// Makes a plain device a doorbell one: BAR1 with the MSI-X table and PBA,
/// the MSI-X and peer-presence capabilities, IVPOSITION = our id, the
/// interrupts (our vectors' GSIs, the peers' doorbells) and, unless
/// rejoining is off, the (sleeping) rejoin thread. Returns the event-loop
/// subscriber, still without its device (see [`WatchParts::attach`]).
fn add_doorbell(
    parts: &mut DeviceParts,
    joined: Joined,
    alloc: &mut BarAllocator,
) -> Result<WatchParts, IvshmemError> {
    let index = parts.index;
    let cfg_err = |source| IvshmemError::Config { index, source };
    let irq_err = |source| IvshmemError::Irq { index, source };
    let bar1 = alloc
        .mmio32
        .alloc(BAR1_SIZE, BAR1_SIZE)
        .ok_or(IvshmemError::NoMmio32 { index })?;
    let mem32 = BarKind::Mem32 {
        prefetchable: false,
    };
    parts
        .config
        .add_bar(1, BAR1_SIZE, mem32, bar1)
        .map_err(cfg_err)?;
    let (body, wmask) = msix_capability(
        joined.vectors,
        1,
        MSIX_TABLE_OFFSET as u32,
        1,
        MSIX_PBA_OFFSET as u32,
    )
    .map_err(|source| IvshmemError::Msix { index, source })?;
    let cap = parts
        .config
        .add_capability(MSIX_CAP_ID, &body, &wmask)
        .map_err(cfg_err)?;
    // The peer-presence extension's announcement (read-only).
    let vendor = presence::capability_body();
    parts
        .config
        .add_capability(presence::VENDOR_CAP_ID, &vendor, &[0; 10])
        .map_err(cfg_err)?;
    let env = &parts.env;
    let mut interrupts = Interrupts::new(
        env.vm.clone(),
        env.irq.clone(),
        joined.id,
        joined.own,
        env.budget.clone(),
    )
    .map_err(irq_err)?;
    interrupts.give_up_when(env.stop.clone());
    for (peer, fds) in joined.peers {
        for (v, fd) in fds.into_iter().enumerate() {
            interrupts.peer_joined(peer, v as u16, fd);
        }
    }
    let watch_changed = interrupts
        .watch_changed
        .try_clone()
        .map_err(|e| irq_err(IrqError::Build(e.to_string())))?;
    let rejoiner = match joined.rejoin {
        Some((memory, options)) => {
            let target = RejoinTarget {
                index,
                socket: joined.socket.clone(),
                options,
                memory,
            };
            let spawned = Rejoiner::spawn(target, parts.env.seccomp);
            Some(spawned.map_err(|err| IvshmemError::Rejoin { index, err })?)
        }
        None => None,
    };
    parts.msix = Some((MsixState::new(joined.vectors), cap));
    parts.interrupts = Some(interrupts);
    Ok(WatchParts {
        conn: joined.conn,
        server: joined.socket,
        watch_changed,
        rejoiner,
    })
}
