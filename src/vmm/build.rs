// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The steps of [`Vmm::new`](super::Vmm::new), in the order it calls them.
//! Each step says what it must come after and why.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::sources::EventLoop;
use super::{io_err, kvm_err, max_vcpus, open_kvm, VmmError};
use crate::arch::x86_64::boot::{self, BootEntry};
use crate::arch::x86_64::{acpi, cpuid, layout, mptable, regs};
use crate::bus::Bus;
use crate::config::size::format_size;
use crate::config::{SerialChoice, VmConfig};
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::i8042::{ExitPort, EXIT_PORT, I8042};
use crate::devices::ivshmem::{BarAllocator, Ivshmem, IvshmemEnv};
use crate::devices::pci::root::PciRoot;
use crate::devices::serial::{
    SerialDevice, SerialInput, SerialSink, UartEvents, COM1_IRQ, COM1_PORT, COM1_PORT_LEN,
};
use crate::sandbox::{self, SeccompMode, ThreadKind};
use crate::stop::VmStop;
use crate::vcpu::{self, VcpuContext, VcpuHandle};

/// Where KVM puts the (Intel-only) TSS: three pages just below the BIOS area.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Refuses what this host can't give before anything is made: more vCPUs
/// than KVM runs, more RAM than the host has.
pub(super) fn check_host(kvm: &Kvm, config: &VmConfig) -> Result<(), VmmError> {
    let max = max_vcpus(kvm);
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
    Ok(())
}

/// Total host memory (MemTotal), if it can be read: sysinfo(2), one call
/// where reading /proc/meminfo took eight.
fn host_memory() -> Option<u64> {
    Some(nix::sys::sysinfo::sysinfo().ok()?.ram_total())
}

/// vCPU 0's thread, started first — by `main` before it even parses the
/// command line ([`Vmm::new_beside`](super::Vmm::new_beside)) — does on another
/// CPU (it is [placed beside](crate::placement) this one) the steps of the
/// build that wait on nothing the steps between make, and confines itself
/// while the rest of the build goes on:
///
/// - KVM's supported CPUID, on its own /dev/kvm fd: ~55 host CPUID
///   instructions, each a VM exit where the host is itself virtualized,
///   ~0.3 ms in all, longer than parsing the command line, mapping RAM and
///   creating the VM. Nothing needs it before the firmware tables (the
///   guest's address width).
/// - The vCPU seccomp filter (~0.1 ms to install), as soon as the build
///   says which mode, so that the thread is ready to run the guest when the
///   build ends; a thread started then would pay its start and its filter
///   after the build.
/// - The PIT, once the irqchip exists: ~0.1 ms (KVM starts a kernel thread
///   for it and registers its ports), while the legacy devices and the
///   vCPUs are made. (Under its filter, `ThreadKind::BootVcpu`'s, which
///   allows KVM_CREATE_PIT2 for this: a second PIT is refused by KVM.)
///
/// `finish` returns it as a `BootVcpu` once all three are
/// done. Without a thread, CPUID and the PIT are done here and vCPU 0 gets
/// a thread of its own later, as the others do.
pub struct BesideBuild {
    helper: Option<Helper>,
}

struct Helper {
    thread: JoinHandle<()>,
    cpuid: Receiver<Result<Vec<kvm_cpuid_entry2>, VmmError>>,
    /// The seccomp mode of the VM being built.
    mode: Sender<SeccompMode>,
    /// The VM once its irqchip exists; dropped unsent if the build fails.
    pit: Sender<Arc<VmFd>>,
    /// The filter's and the PIT's outcome.
    ready: Receiver<Result<(), VmmError>>,
    run: Sender<(VcpuFd, VcpuContext)>,
}

/// vCPU 0's thread, confined, waiting for its vCPU (see [`BesideBuild`]).
/// Dropped unstarted (the VM never runs), it ends by itself.
pub struct BootVcpu {
    thread: JoinHandle<()>,
    run: Sender<(VcpuFd, VcpuContext)>,
}

impl BootVcpu {
    /// Gives the thread its vCPU: it runs it as [`vcpu::spawn`]'s would.
    pub fn start(self, vcpu: VcpuFd, ctx: VcpuContext) -> Result<VcpuHandle, VcpuFd> {
        match self.run.send((vcpu, ctx)) {
            Ok(()) => Ok(VcpuHandle::new(self.thread)),
            Err(mpsc::SendError((vcpu, _))) => Err(vcpu),
        }
    }
}

impl BesideBuild {
    /// Starts vCPU 0's thread (it asks for CPUID right away); its signals
    /// are blocked as a helper's are, but for the kick. Dropped unused (a
    /// command line or a build that fails), it ends by itself and is
    /// joined.
    pub fn start() -> BesideBuild {
        let (cpuid_tx, cpuid) = mpsc::channel();
        let (mode, mode_rx) = mpsc::channel::<SeccompMode>();
        let (pit, pit_rx) = mpsc::channel::<Arc<VmFd>>();
        let (ready_tx, ready) = mpsc::channel();
        let (run, run_rx) = mpsc::channel::<(VcpuFd, VcpuContext)>();
        let thread = crate::stop::spawn_without_signals("vcpu0", move || {
            let supported = open_kvm().and_then(|kvm| Ok(cpuid::supported(&kvm)?));
            let asked = supported.is_ok();
            let _ = cpuid_tx.send(supported);
            if !asked {
                return;
            }
            let Ok(mode) = crate::placement::recv_soon(&mode_rx) else {
                return;
            };
            let confined = sandbox::install(ThreadKind::BootVcpu, mode).map_err(|e| VmmError::Io {
                what: "vCPU 0's seccomp filter",
                err: io::Error::other(e.to_string()),
            });
            let ready = match confined {
                Err(e) => Err(e),
                Ok(()) => match crate::placement::recv_soon(&pit_rx) {
                    Ok(vm) => create_pit(&vm),
                    // The build failed before the irqchip.
                    Err(_) => return,
                },
            };
            let ok = ready.is_ok();
            let _ = ready_tx.send(ready);
            if let (true, Ok((vcpu, ctx))) = (ok, crate::placement::recv_soon(&run_rx)) {
                vcpu::run_confined(vcpu, 0, &ctx);
            }
        });
        BesideBuild {
            helper: thread.ok().map(|thread| Helper {
                thread,
                cpuid,
                mode,
                pit,
                ready,
                run,
            }),
        }
    }

    /// Tells the thread the VM's seccomp mode: it confines itself now.
    pub(super) fn confine(&self, seccomp: SeccompMode) {
        if let Some(h) = &self.helper {
            let _ = h.mode.send(seccomp);
        }
    }

    /// KVM's supported CPUID (asked with `kvm` if there is no helper).
    pub(super) fn supported_cpuid(&self, kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, VmmError> {
        match &self.helper {
            Some(h) => answer(&h.cpuid, "vCPU 0's thread (asking KVM for CPUID)"),
            None => Ok(cpuid::supported(kvm)?),
        }
    }

    /// Has the PIT created on `vm`, whose irqchip exists.
    fn create_pit(&self, vm: &Arc<VmFd>) -> Result<(), VmmError> {
        match &self.helper {
            Some(h) if h.pit.send(vm.clone()).is_ok() => Ok(()),
            _ => create_pit(vm),
        }
    }

    /// Waits for vCPU 0's filter and the PIT; vCPU 0's thread, if it has
    /// one.
    pub(super) fn finish(mut self) -> Result<Option<BootVcpu>, VmmError> {
        let Some(h) = &self.helper else {
            return Ok(None);
        };
        // On an error `self` drops, which joins the thread (it sent the
        // error and ends at once): a VM it never took out of its channel
        // (its filter failed first) is gone before the RAM.
        answer(&h.ready, "vCPU 0's thread (its filter, the PIT)")?;
        let h = self.helper.take().expect("checked above");
        Ok(Some(BootVcpu {
            thread: h.thread,
            run: h.run,
        }))
    }
}

/// What the helper sent on `rx`, or that it ended without sending it.
fn answer<T>(rx: &Receiver<Result<T, VmmError>>, what: &'static str) -> Result<T, VmmError> {
    crate::placement::recv_soon(rx).unwrap_or_else(|_| {
        Err(VmmError::Io {
            what,
            err: io::Error::other("it ended without an answer"),
        })
    })
}

impl Drop for BesideBuild {
    /// A failed build still waits for the thread, which may hold the VM:
    /// the VM must be gone before its RAM is unmapped.
    fn drop(&mut self) {
        if let Some(h) = self.helper.take() {
            drop((h.mode, h.pit, h.run));
            let _ = h.thread.join();
        }
    }
}

/// Guest RAM as `layout` places it (below 3 GiB, the rest above 4 GiB).
pub(super) fn guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, VmmError> {
    GuestMemoryMmap::<()>::from_ranges(&layout::ram_regions(mem_size)).map_err(|e| {
        VmmError::GuestMemory {
            size: format_size(mem_size),
            err: e.to_string(),
        }
    })
}

/// One KVM memory slot per RAM region; returns the first free slot number.
///
/// Before the irqchip exists (see [`irqchip_and_clock`]): then a slot costs
/// microseconds instead of an SRCU grace period.
pub(super) fn register_ram(vm: &VmFd, guest_mem: &GuestMemoryMmap) -> Result<u32, VmmError> {
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
        // outlives the VM: `Vmm` drops it last, and `Vmm::new` creates it
        // before the VM, so on a failed build it is dropped after the VM too.
        unsafe { vm.set_user_memory_region(slot) }.map_err(kvm_err("registering guest RAM"))?;
        next_slot += 1;
    }
    Ok(next_slot)
}

/// The kernel, initrd and command line, into RAM.
pub(super) fn load_kernel(
    guest_mem: &GuestMemoryMmap,
    config: &VmConfig,
) -> Result<BootEntry, VmmError> {
    Ok(boot::load_kernel(
        guest_mem,
        config.mem_size,
        &config.kernel,
        config.initrd.as_deref(),
        &config.cmdline,
    )?)
}

/// The firmware tables that describe the machine to the kernel: the MP
/// table, for kernels without ACPI or booted with `acpi=off`, and the ACPI
/// tables (whose PCI windows depend on the guest's physical address width,
/// so after CPUID). The tables need only RAM and the configuration; the
/// power device their FADT names is a legacy device.
pub(super) fn firmware_tables(
    guest_mem: &GuestMemoryMmap,
    config: &VmConfig,
    phys_bits: u8,
) -> Result<(), VmmError> {
    // check_host bounded the vCPU count by mptable::MAX_CPUS.
    let num_cpus = config.cpus as u8;
    mptable::setup_mptable(guest_mem, num_cpus)?;
    acpi::setup_acpi(guest_mem, num_cpus, config.mem_size, phys_bits)?;
    Ok(())
}

/// The ivshmem devices and the PCI bus they sit on. Each opens its shared
/// memory (or joins its server) and registers its BAR2 memory slot.
///
/// Before the irqchip (see [`irqchip_and_clock`]): a device needs no
/// interrupt controller until the guest enables MSI-X, and its memory slot
/// is cheap only while there is none.
pub(super) fn ivshmem_devices(
    config: &VmConfig,
    env: &IvshmemEnv,
    first_slot: u32,
    events: &mut EventLoop,
) -> Result<(PciRoot, Vec<Ivshmem>), VmmError> {
    let mut root = PciRoot::new();
    let mut allocator = BarAllocator::new(config.mem_size, env.phys_bits, first_slot);
    let mut devices = Vec::with_capacity(config.ivshmem.len());
    for (index, backing) in config.ivshmem.iter().enumerate() {
        let dev = Ivshmem::new(index, backing, env, &mut allocator)?;
        root.add_function(dev.function())
            .map_err(|_| VmmError::PciFull)?;
        if let Some(watch) = dev.subscriber() {
            events.add(format!("ivshmem{index}"), watch);
        }
        if let Some(watch) = dev.backing_watch() {
            events.add(format!("ivshmem{index}-backing"), watch);
        }
        devices.push(dev);
    }
    Ok((root, devices))
}

/// The in-kernel irqchip (PIC, IOAPIC, LAPICs), then the PIT (by the
/// helper: see [`BesideBuild`]).
///
/// After every memory slot that exists at boot: once an irqchip exists,
/// each memory-slot change waits for an SRCU grace period inside KVM (~7 ms
/// here, most of the time to first guest output), while before it takes
/// microseconds. Only a BAR2 the guest moves later pays the grace period.
/// The PIT after the irqchip: KVM wires it to the irqchip's PIC.
pub(super) fn irqchip_and_clock(vm: &Arc<VmFd>, beside: &BesideBuild) -> Result<(), VmmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("creating the in-kernel irqchip"))?;
    beside.create_pit(vm)
}

fn create_pit(vm: &VmFd) -> Result<(), VmmError> {
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(kvm_err("creating the in-kernel PIT"))
}

/// COM1 (with stdin as its input when the console is stdio), the i8042
/// reset line, the debug exit port and the ACPI power device (poweroff and
/// the FADT reset register stop the VM with status 0).
///
/// After the irqchip: COM1's interrupt is an irqfd on its ISA GSI.
pub(super) fn legacy_devices(
    vm: &VmFd,
    config: &VmConfig,
    pio: &Bus,
    stop: &Arc<VmStop>,
    events: &mut EventLoop,
) -> Result<Arc<UartEvents>, VmmError> {
    let serial_irq =
        EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("the serial interrupt"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_err("wiring the serial interrupt (irqfd)"))?;
    let drained =
        EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("the serial input event"))?;
    let uart_events = Arc::new(UartEvents::new(
        drained
            .try_clone()
            .map_err(io_err("the serial input event"))?,
    ));
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(
            serial_irq,
            uart_events.clone(),
            serial_sink(&config.serial)?,
            config.seccomp,
        )
        .map_err(io_err("the serial console"))?,
    ));
    pio.insert(COM1_PORT, COM1_PORT_LEN, serial.clone())?;
    if config.serial == SerialChoice::Stdio {
        let input =
            SerialInput::new(serial, drained, stop.clone()).map_err(io_err("serial input"))?;
        events.add("stdin", Arc::new(Mutex::new(input)));
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
    pio.insert(
        u64::from(layout::ACPI_SLEEP_CONTROL_PORT),
        u64::from(layout::ACPI_PM_PORTS_LEN),
        Arc::new(Mutex::new(AcpiPm::new(stop.clone()))),
    )?;
    Ok(uart_events)
}

/// Where the guest's serial output goes; a file is created 0600.
fn serial_sink(choice: &SerialChoice) -> Result<SerialSink, VmmError> {
    Ok(match choice {
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
    })
}

/// Every vCPU gets CPUID, MSRs, FPU and LAPIC; the first also gets the boot
/// state. The others wait for INIT/SIPI from the guest.
///
/// After the irqchip: KVM gives a vCPU an in-kernel LAPIC only if the
/// irqchip exists when the vCPU is created.
pub(super) fn vcpus(
    vm: &VmFd,
    supported_cpuid: &[kvm_cpuid_entry2],
    cpus: u32,
    guest_mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<Vec<VcpuFd>, VmmError> {
    // check_host bounded the count by mptable::MAX_CPUS (a u8).
    let num_cpus = cpus as u8;
    let mut vcpus = Vec::with_capacity(usize::from(num_cpus));
    for index in 0..num_cpus {
        let vcpu = vm
            .create_vcpu(u64::from(index))
            .map_err(kvm_err("creating a vCPU"))?;
        cpuid::setup_cpuid(supported_cpuid, &vcpu, index, num_cpus)?;
        regs::setup_msrs(&vcpu)?;
        regs::setup_fpu(&vcpu)?;
        regs::setup_lapic(&vcpu)?;
        if index == 0 {
            regs::setup_boot_cpu(&vcpu, guest_mem, entry)?;
        }
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}
