// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Builds a VM from a [`VmConfig`] and runs its event loop to the end.
//!
//! Building ([`Vmm::new`]) and running ([`Vmm::run`]) are separate: every
//! check that can fail happens while building, before any vCPU runs, and a
//! failed build releases what it made (shared memory it created included).

pub mod stop;
pub mod terminal;

mod events;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::x86_64::{acpi, boot, cpuid, layout, mptable, regs};
use crate::bus::{Bus, BusError};
use crate::cli::size::format_size;
use crate::cli::vm::{SerialChoice, VmConfig};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::i8042::{ExitPort, EXIT_PORT, I8042};
use crate::devices::ivshmem::doorbell::IoeventfdBudget;
use crate::devices::ivshmem::{self, Ivshmem, IvshmemEnv, IvshmemError};
use crate::devices::pci::root::{PciRoot, CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN};
use crate::devices::serial::{
    SerialDevice, SerialInput, SerialSink, UartEvents, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
};
use crate::irq::IrqRouting;
use crate::vcpu::{self, ExitCounters, UnhandledLog, VcpuContext};
use events::{Counted, LoopCounters, PvmHint, SignalHandler, StopWatcher};
use stop::{StopReason, VmStop};

/// Where KVM puts the (Intel-only) TSS: three pages just below the BIOS area.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Building a VM failed. Each message names the problem and the fix.
#[derive(Debug, Error)]
pub enum VmmError {
    #[error("/dev/kvm does not exist: this host has no KVM; load the kvm module (modprobe kvm_intel or kvm_amd) and enable virtualization in the firmware")]
    KvmMissing,
    #[error("/dev/kvm is not accessible ({0}): run as root or add your user to the 'kvm' group")]
    KvmAccess(io::Error),
    #[error("KVM: {what} failed: {err}")]
    Kvm {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("--cpus {asked}: KVM on this host allows at most {max} vCPUs; use --cpus 1..={max}")]
    TooManyCpus { asked: u32, max: u32 },
    #[error("--mem {asked} is more than this host's memory ({host}); use a smaller --mem")]
    MemTooLarge { asked: String, host: String },
    #[error("allocating {size} of guest memory failed ({err}); use a smaller --mem")]
    GuestMemory { size: String, err: String },
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Cpuid(#[from] cpuid::CpuidError),
    #[error(transparent)]
    Mptable(#[from] mptable::MptableError),
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    #[error(transparent)]
    Ivshmem(#[from] IvshmemError),
    #[error(
        "--serial {path}: can't open it for writing ({err}); give a writable file, stdio or none"
    )]
    SerialFile { path: PathBuf, err: io::Error },
    #[error("setting up {what} failed: {err}")]
    Io { what: &'static str, err: io::Error },
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    #[error("too many PCI devices: bus 0 has room for 31")]
    PciFull,
}

impl VmmError {
    /// 2 for what the user asked for that can't work as asked; 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmmError::TooManyCpus { .. } | VmmError::MemTooLarge { .. } => 2,
            VmmError::Ivshmem(e) => e.exit_code(),
            _ => 1,
        }
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |err| VmmError::Kvm { what, err }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmmError {
    move |err| VmmError::Io { what, err }
}

/// Opens /dev/kvm with an error that says what to do.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    match Kvm::new() {
        Ok(kvm) => Ok(kvm),
        Err(e) if e.errno() == libc::ENOENT => Err(VmmError::KvmMissing),
        Err(e) => Err(VmmError::KvmAccess(io::Error::from_raw_os_error(e.errno()))),
    }
}

/// The most vCPUs we run: what KVM recommends for this host (its physical
/// CPU count), within the MP table's limit.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    let recommended = kvm.check_extension_int(Cap::NrVcpus);
    let n = if recommended > 0 {
        recommended as u32
    } else {
        kvm.get_max_vcpus() as u32
    };
    n.clamp(1, u32::from(mptable::MAX_CPUS))
}

/// Whether /dev/kvm is PVM (software virtualization, module kvm_pvm): guest
/// kernel code runs emulated there and ordinary Linux kernels don't boot.
pub fn kvm_is_pvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// Total host memory from /proc/meminfo, if it can be read.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A built VM, ready to run.
pub struct Vmm {
    /// Held so the VM outlives its vCPU threads and devices.
    _vm: Arc<VmFd>,
    // Kept alive for the VM's lifetime: KVM memory slots point into it.
    _guest_mem: GuestMemoryMmap,
    vcpus: Vec<VcpuFd>,
    ctx: VcpuContext,
    stop: Arc<VmStop>,
    event_manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    loop_counters: Arc<LoopCounters>,
    ivshmem: Vec<Ivshmem>,
    serial_is_stdio: bool,
    uart_events: Arc<UartEvents>,
    stats: bool,
}

impl Vmm {
    /// Builds the VM: memory, kernel, devices, vCPUs. Nothing runs yet.
    pub fn new(config: &VmConfig) -> Result<Vmm, VmmError> {
        let kvm = open_kvm()?;
        let max = max_vcpus(&kvm);
        if config.cpus > max {
            return Err(VmmError::TooManyCpus {
                asked: config.cpus,
                max,
            });
        }
        if let Some(host) = host_memory() {
            if config.mem_size > host {
                return Err(VmmError::MemTooLarge {
                    asked: format_size(config.mem_size),
                    host: format_size(host & !((1 << 30) - 1)),
                });
            }
        }
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);

        let guest_mem = GuestMemoryMmap::<()>::from_ranges(&layout::ram_regions(config.mem_size))
            .map_err(|e| VmmError::GuestMemory {
            size: format_size(config.mem_size),
            err: e.to_string(),
        })?;
        let mut next_slot = 0u32;
        for region in guest_mem.iter() {
            let slot = kvm_userspace_memory_region {
                slot: next_slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `guest_mem`, which
            // the Vmm keeps until the VM (and its vCPUs) are gone.
            unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("registering guest RAM"))?;
            next_slot += 1;
        }

        let entry = boot::load_kernel(
            &guest_mem,
            config.mem_size,
            &config.kernel,
            config.initrd.as_deref(),
            &config.cmdline,
        )?;
        // The cpus bound was checked against mptable::MAX_CPUS above.
        let num_cpus = config.cpus as u8;
        mptable::setup_mptable(&guest_mem, num_cpus)?;

        let stop = Arc::new(VmStop::new().map_err(io_err("the stop event"))?);
        let pio = Arc::new(Bus::new("port I/O"));
        let mmio = Arc::new(Bus::new("MMIO"));
        let irq = Arc::new(IrqRouting::new());
        let loop_counters = Arc::new(LoopCounters::default());
        let mut event_manager = EventManager::new().map_err(|e| VmmError::Io {
            what: "the event loop",
            err: io::Error::other(format!("{e:?}")),
        })?;

        // PCI bus 0 with the ivshmem functions.
        let mut root = PciRoot::new();
        let supported_cpuid = cpuid::supported(&kvm)?;
        let phys_bits = cpuid::phys_bits(&supported_cpuid);
        let env = IvshmemEnv {
            vm: vm.clone(),
            mmio: mmio.clone(),
            irq: irq.clone(),
            mem_size: config.mem_size,
            phys_bits,
            budget: Arc::new(IoeventfdBudget::default()),
        };
        let mut allocator = ivshmem::BarAllocator::new(config.mem_size, phys_bits, next_slot);
        let mut devices = Vec::new();
        for (index, backing) in config.ivshmem.iter().enumerate() {
            let dev = Ivshmem::new(index, backing, &env, &mut allocator)?;
            root.add_function(dev.function())
                .map_err(|_| VmmError::PciFull)?;
            if let Some(sub) = dev.subscriber() {
                let name = format!("ivshmem{index}");
                event_manager.add_subscriber(Counted::wrap(name, sub, loop_counters.clone()));
            }
            devices.push(dev);
        }

        // Only now the irqchip and PIT: once they exist, every memory-slot
        // change waits for an SRCU grace period inside KVM (~7 ms here, most
        // of the time to first guest output), while before they exist it
        // takes microseconds. So RAM and the ivshmem BAR2 slots go in first
        // (a device needs no irqchip until the guest enables MSI-X); only a
        // BAR2 the guest moves later pays the grace period.
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm.create_irq_chip()
            .map_err(kvm_err("creating the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(kvm_err("creating the in-kernel PIT"))?;

        // COM1 and its interrupt.
        let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("the serial interrupt"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("wiring the serial interrupt (irqfd)"))?;
        let drained = EventFd::new(EFD_NONBLOCK).map_err(io_err("the serial input event"))?;
        let sink = match &config.serial {
            SerialChoice::Stdio => SerialSink::Stdout,
            SerialChoice::None => SerialSink::Null,
            SerialChoice::File(path) => SerialSink::File(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|err| VmmError::SerialFile {
                        path: path.clone(),
                        err,
                    })?,
            ),
        };
        let drained_clone = drained
            .try_clone()
            .map_err(io_err("the serial input event"))?;
        let uart_events = Arc::new(UartEvents::new(drained_clone));
        let serial = Arc::new(Mutex::new(
            SerialDevice::new(serial_irq, uart_events.clone(), sink)
                .map_err(io_err("the serial console"))?,
        ));
        pio.insert(COM1_PORT, COM1_PORT_LEN, serial.clone())?;
        if config.serial == SerialChoice::Stdio {
            let input =
                SerialInput::new(serial, drained, stop.clone()).map_err(io_err("serial input"))?;
            event_manager.add_subscriber(Counted::wrap(
                "stdin",
                Arc::new(Mutex::new(input)),
                loop_counters.clone(),
            ));
        }

        pio.insert(
            I8042::BASE,
            I8042::LEN,
            Arc::new(Mutex::new(I8042::new(stop.clone()))),
        )?;
        pio.insert(
            EXIT_PORT,
            1,
            Arc::new(Mutex::new(ExitPort::new(stop.clone()))),
        )?;

        // ACPI tables (the MP table above stays, for kernels without ACPI or
        // booted with acpi=off) and the power device their FADT names:
        // poweroff (S5) and the reset register stop the VM with status 0.
        acpi::setup_acpi(&guest_mem, num_cpus, config.mem_size, phys_bits)?;
        pio.insert(
            u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
            u64::from(layout::ACPI_PM_PORTS_LEN),
            Arc::new(Mutex::new(AcpiPm::new(stop.clone()))),
        )?;

        pio.insert(
            CONFIG_ADDRESS_PORT,
            CONFIG_PORTS_LEN,
            Arc::new(Mutex::new(root)),
        )?;

        // vCPUs: every one gets CPUID, MSRs, FPU and LAPIC; the first also
        // gets the boot state. The others wait for INIT/SIPI from the guest.
        let mut vcpus = Vec::with_capacity(config.cpus as usize);
        for index in 0..num_cpus {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("creating a vCPU"))?;
            cpuid::setup_cpuid(&supported_cpuid, &vcpu, index, num_cpus)?;
            regs::setup_msrs(&vcpu)?;
            regs::setup_fpu(&vcpu)?;
            regs::setup_lapic(&vcpu)?;
            if index == 0 {
                regs::setup_boot_cpu(&vcpu, &guest_mem, &entry)?;
            }
            vcpus.push(vcpu);
        }

        let run_mmap_size = kvm
            .get_vcpu_mmap_size()
            .map_err(kvm_err("KVM_GET_VCPU_MMAP_SIZE"))?;
        let ctx = VcpuContext {
            pio,
            mmio,
            stop: stop.clone(),
            counters: Arc::new(ExitCounters::default()),
            unhandled: Arc::new(UnhandledLog::default()),
            run_mmap_size,
        };
        event_manager.add_subscriber(Counted::wrap(
            "stop",
            Arc::new(Mutex::new(StopWatcher::new(stop.clone()))),
            loop_counters.clone(),
        ));

        // Start-up succeeded: shared memory we created is the user's now.
        for dev in &mut devices {
            dev.keep_backing();
        }
        Ok(Vmm {
            _vm: vm,
            _guest_mem: guest_mem,
            vcpus,
            ctx,
            stop,
            event_manager,
            loop_counters,
            ivshmem: devices,
            serial_is_stdio: config.serial == SerialChoice::Stdio,
            uart_events,
            stats: config.stats,
        })
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<StopReason, VmmError> {
        let signals = SignalHandler::new(self.stop.clone()).map_err(io_err("signal handling"))?;
        let stats_request = signals.stats_requested();
        self.event_manager.add_subscriber(Counted::wrap(
            "signal",
            Arc::new(Mutex::new(signals)),
            self.loop_counters.clone(),
        ));
        vcpu::install_kick_handler().map_err(io_err("the vCPU kick signal"))?;
        if kvm_is_pvm() {
            match PvmHint::new(self.uart_events.clone()) {
                Ok(hint) => {
                    self.event_manager
                        .add_subscriber(Arc::new(Mutex::new(hint)));
                }
                Err(e) => log::debug!("no PVM hint timer: {e}"),
            }
        }
        let _raw = if self.serial_is_stdio {
            terminal::enter_raw_mode()
        } else {
            None
        };

        let mut handles = Vec::new();
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            match vcpu::spawn(vcpu, index as u8, self.ctx.clone()) {
                Ok(h) => handles.push(h),
                Err(err) => {
                    self.stop
                        .request(StopReason::Fatal(format!("starting a vCPU thread: {err}")));
                    break;
                }
            }
        }

        while !self.stop.is_stopping() {
            // EINTR is absorbed by the event manager; anything else (a broken
            // epoll fd) won't heal, so stop rather than spin on it.
            if let Err(e) = self.event_manager.run() {
                self.stop
                    .request(StopReason::Fatal(format!("the event loop failed: {e:?}")));
            }
            if stats_request.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.print_stats();
            }
        }

        for h in &handles {
            h.kick();
        }
        for h in handles {
            h.join();
        }
        drop(_raw);
        if self.stats {
            self.print_stats();
        }
        Ok(self
            .stop
            .reason()
            .unwrap_or(StopReason::Fatal("stopped without a reason".into())))
    }

    /// Exit and event counters on stderr, one line each.
    pub fn print_stats(&self) {
        eprintln!("{}", self.stats_lines().join("\n"));
    }

    fn stats_lines(&self) -> Vec<String> {
        let join = |pairs: Vec<(String, u64)>| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let exits = self
            .ctx
            .counters
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut lines = vec![
            format!("ivvmm stats: vcpu_exits {}", join(exits)),
            format!(
                "ivvmm stats: event_loop {}",
                join(self.loop_counters.snapshot())
            ),
        ];
        for dev in &self.ivshmem {
            lines.push(format!(
                "ivvmm stats: ivshmem{} {}",
                dev.index(),
                join(dev.stats())
            ));
        }
        lines
    }
}
