// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Builds a VM from a [`VmConfig`] and runs its event loop to the end.
//!
//! Building ([`Vmm::new`]) and running ([`Vmm::run`]) are separate: every
//! check that can fail happens while building, before any vCPU runs, and a
//! failed build releases what it made (shared memory it created included).

pub mod terminal;

mod build;
mod sources;

pub use build::BesideBuild;

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::SubscriberOps;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use thiserror::Error;
use vm_memory::GuestMemoryMmap;

use crate::arch::x86_64::{acpi, boot, cpuid, mptable, regs};
use crate::bus::{Bus, BusError};
use crate::config::{SerialChoice, VmConfig};
use crate::devices::ivshmem::interrupts::IoeventfdBudget;
use crate::devices::ivshmem::{Ivshmem, IvshmemEnv, IvshmemError};
use crate::devices::pci::root::{CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN};
use crate::devices::serial::UartEvents;
use crate::irq::IrqRouting;
use crate::sandbox::{self, SeccompMode, StartGate, ThreadKind};
use crate::stop::{StopReason, VmStop};
use crate::vcpu::{self, ExitCounters, UnhandledLog, VcpuContext};
use sources::{EventLoop, PvmHint, SignalHandler, StopWatcher};

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

/// A built VM, ready to run.
///
/// Field order is drop order, and it matters: everything that holds the VM
/// fd or a vCPU fd (devices, buses, the event loop's subscribers) comes
/// before `guest_mem`, so the VM — and with it every KVM memory slot that
/// points into guest RAM — is gone before RAM is unmapped.
pub struct Vmm {
    events: EventLoop,
    ivshmem: Vec<Ivshmem>,
    vcpus: Vec<VcpuFd>,
    /// vCPU 0's thread, confined and waiting (see build::BesideBuild).
    boot_vcpu: Option<build::BootVcpu>,
    ctx: VcpuContext,
    stop: Arc<VmStop>,
    serial_is_stdio: bool,
    uart_events: Arc<UartEvents>,
    stats: bool,
    _vm: Arc<VmFd>,
    /// Last: see above.
    _guest_mem: GuestMemoryMmap,
}

impl Vmm {
    /// Builds the VM in the order KVM and the guest need, step by step (each
    /// step says what it must come after). Nothing runs yet; on error
    /// everything made so far is released, shared memory we created too.
    pub fn new(config: &VmConfig) -> Result<Vmm, VmmError> {
        Self::new_beside(config, BesideBuild::start())
    }

    /// [`new`](Self::new), with vCPU 0's thread already started (`main`
    /// starts it before it parses the command line: see [`BesideBuild`]).
    pub fn new_beside(config: &VmConfig, beside: BesideBuild) -> Result<Vmm, VmmError> {
        beside.confine(config.seccomp);
        let kvm = open_kvm()?;
        build::check_host(&kvm, config)?;
        // RAM exists before the VM, so that a failure below drops the VM
        // (locals drop in reverse) before the memory its slots point into;
        // and before the build helper (bound again here, after the RAM, so
        // that it drops first), which may hold the VM too and is joined
        // when dropped.
        let guest_mem = build::guest_memory(config.mem_size)?;
        let beside = beside;
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("creating the VM"))?);
        let first_device_slot = build::register_ram(&vm, &guest_mem)?;
        let entry = build::load_kernel(&guest_mem, config)?;
        let supported_cpuid = beside.supported_cpuid(&kvm)?;
        let phys_bits = cpuid::phys_bits(&supported_cpuid);
        build::firmware_tables(&guest_mem, config, phys_bits)?;

        let stop = Arc::new(VmStop::new().map_err(io_err("the stop event"))?);
        let pio = Arc::new(Bus::new("port I/O"));
        let mmio = Arc::new(Bus::new("MMIO"));
        let mmio_under = Arc::new(Bus::new("MMIO under memory slots"));
        let mut events = EventLoop::new()?;
        let env = IvshmemEnv {
            vm: vm.clone(),
            mmio: mmio.clone(),
            mmio_under: mmio_under.clone(),
            irq: Arc::new(IrqRouting::new()),
            mem_size: config.mem_size,
            phys_bits,
            budget: Arc::new(IoeventfdBudget::default()),
            seccomp: config.seccomp,
            stop: stop.clone(),
        };
        // Devices with memory slots before the irqchip (see irqchip_and_clock).
        let (root, mut devices) =
            build::ivshmem_devices(config, &env, first_device_slot, &mut events)?;
        build::irqchip_and_clock(&vm, &beside)?;
        let uart_events = build::legacy_devices(&vm, config, &pio, &stop, &mut events)?;
        pio.insert(
            CONFIG_ADDRESS_PORT,
            CONFIG_PORTS_LEN,
            Arc::new(Mutex::new(root)),
        )?;
        let vcpus = build::vcpus(&vm, &supported_cpuid, config.cpus, &guest_mem, &entry)?;
        let boot_vcpu = beside.finish()?;

        let ctx = VcpuContext {
            pio,
            mmio,
            mmio_under,
            stop: stop.clone(),
            counters: Arc::new(ExitCounters::default()),
            unhandled: Arc::new(UnhandledLog::default()),
            // KVM_GET_VCPU_MMAP_SIZE, asked by create_vm already.
            run_mmap_size: vm.run_size(),
            seccomp: config.seccomp,
            start: Arc::new(StartGate::default()),
        };
        events.add("stop", Arc::new(Mutex::new(StopWatcher::new(stop.clone()))));

        // Start-up succeeded: shared memory we created is the user's now.
        for dev in &mut devices {
            dev.keep_backing();
        }
        Ok(Vmm {
            events,
            ivshmem: devices,
            vcpus,
            boot_vcpu,
            ctx,
            stop,
            serial_is_stdio: config.serial == SerialChoice::Stdio,
            uart_events,
            stats: config.stats,
            _vm: vm,
            _guest_mem: guest_mem,
        })
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> Result<StopReason, VmmError> {
        let signals = SignalHandler::new(self.stop.clone()).map_err(io_err("signal handling"))?;
        let stats_request = signals.stats_requested();
        self.events.add("signal", Arc::new(Mutex::new(signals)));
        vcpu::install_kick_handler().map_err(io_err("the vCPU kick signal"))?;
        if kvm_is_pvm() {
            match PvmHint::new(self.uart_events.clone()) {
                Ok(hint) => {
                    // Not counted: it is a timer, not a source of work.
                    self.events
                        .manager
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
        let mut boot_vcpu = self.boot_vcpu.take();
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            // vCPU 0's thread exists already, confined: it only takes its
            // vCPU (the first; taken, `boot_vcpu` is None for the others),
            // or, if it is gone, vCPU 0 gets a thread as the others do.
            let ctx = self.ctx.clone();
            let started = match boot_vcpu.take() {
                Some(boot) => boot
                    .start(vcpu, ctx.clone())
                    .or_else(|vcpu| vcpu::spawn(vcpu, index as u8, ctx)),
                None => vcpu::spawn(vcpu, index as u8, ctx),
            };
            match started {
                Ok(h) => handles.push(h),
                Err(err) => {
                    self.stop
                        .request(StopReason::Fatal(format!("starting a vCPU thread: {err}")));
                    break;
                }
            }
        }
        // Confined last (it spawned the vCPUs), after the helper threads
        // confirmed theirs; then the guest may run.
        let confined = sandbox::helpers_confined()
            .map_err(|e| format!("seccomp: a helper thread: {e}"))
            .and_then(|()| {
                sandbox::install(ThreadKind::Vmm, self.ctx.seccomp).map_err(|e| e.to_string())
            });
        if let Err(e) = &confined {
            self.stop.request(StopReason::Fatal(e.clone()));
        }
        if self.ctx.seccomp == SeccompMode::Log {
            log::info!("seccomp: log mode: syscalls outside the filters are allowed and reported in the kernel log (dmesg, audit)");
        }
        self.ctx
            .start
            .open(confined.is_ok() && !self.stop.is_stopping());

        while !self.stop.is_stopping() {
            // EINTR is absorbed by the event manager; anything else (a broken
            // epoll fd) won't heal, so stop rather than spin on it.
            if let Err(e) = self.events.manager.run() {
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
                join(self.events.counters.snapshot())
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
