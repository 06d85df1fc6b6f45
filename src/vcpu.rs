// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vCPU threads: the KVM_RUN loop, exit dispatch to the buses, per-exit counters.
//!
//! Each vCPU runs on its own thread and handles its PIO/MMIO exits
//! synchronously through the shared buses. Stopping uses the usual KVM
//! pattern: the main thread sets the stop flag and sends `SIGRTMIN` to the
//! thread; the handler sets `immediate_exit` in that vCPU's `kvm_run`, so the
//! thread leaves KVM_RUN even if the signal landed just before it entered.

use std::cell::Cell;
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, KVM_EXIT_IO_OUT, KVM_SYSTEM_EVENT_CRASH};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable};

use crate::bus::Bus;
use crate::sandbox::{self, SeccompMode, StartGate, ThreadKind};
use crate::stop::{kick_signal, StopReason, VmStop};

/// Exits that reached VMM userspace, by kind. Everything the doorbell path
/// must *not* cause shows up here (see `--stats`).
#[derive(Default, Debug)]
pub struct ExitCounters {
    pub pio_in: AtomicU64,
    pub pio_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    /// KVM_RUN returned early because of a signal (kicks, stops).
    pub interrupted: AtomicU64,
    /// Accesses no device claimed.
    pub unhandled: AtomicU64,
    pub other: AtomicU64,
    /// KVM_RUN failed on guest memory (EFAULT; see `memory_fault`).
    pub memory_faults: AtomicU64,
}

impl ExitCounters {
    /// Name/value pairs in a fixed order, for printing.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("pio_in", get(&self.pio_in)),
            ("pio_out", get(&self.pio_out)),
            ("mmio_read", get(&self.mmio_read)),
            ("mmio_write", get(&self.mmio_write)),
            ("interrupted", get(&self.interrupted)),
            ("unhandled", get(&self.unhandled)),
            ("other", get(&self.other)),
            ("memory_faults", get(&self.memory_faults)),
        ]
    }
}

/// Logs each unhandled address once, and stops logging after a cap so a
/// guest can't flood the log.
pub struct UnhandledLog {
    seen: Mutex<HashSet<(bool, u64)>>,
}

const UNHANDLED_LOG_CAP: usize = 64;

impl Default for UnhandledLog {
    fn default() -> Self {
        UnhandledLog {
            seen: Mutex::new(HashSet::new()),
        }
    }
}

impl UnhandledLog {
    fn note(&self, mmio: bool, addr: u64, write: bool, width: usize) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > UNHANDLED_LOG_CAP || !seen.insert((mmio, addr)) {
            return;
        }
        let space = if mmio { "MMIO" } else { "port" };
        let what = if write {
            "write ignored"
        } else {
            "read returns all-ones"
        };
        if seen.len() > UNHANDLED_LOG_CAP {
            log::info!("more unhandled guest accesses; no longer logging them");
        } else {
            log::info!(
                "unhandled guest {space} access at {addr:#x} (width {width}): {what} (logged once per address)"
            );
        }
    }
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    /// MMIO ranges under memory slots (BAR2s), consulted when `mmio` has
    /// nothing: what a slot does not serve, and never above another BAR.
    pub mmio_under: Arc<Bus>,
    pub stop: Arc<VmStop>,
    pub counters: Arc<ExitCounters>,
    pub unhandled: Arc<UnhandledLog>,
    /// Size of each vCPU's kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE); port
    /// I/O data lives inside it, usually on its second page.
    pub run_mmap_size: usize,
    /// Each vCPU thread confines itself with the vCPU filter, then waits
    /// here until the event-loop thread is confined too.
    pub seccomp: SeccompMode,
    pub start: Arc<StartGate>,
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe work: one volatile store into this thread's kvm_run.
    KVM_RUN.with(|cell| {
        let run = cell.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this thread while its VcpuFd (and
            // so the kvm_run mapping) is alive, and cleared before it drops.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler; call once before spawning vCPUs.
pub fn install_kick_handler() -> io::Result<()> {
    register_signal_handler(kick_signal(), handle_kick).map_err(io::Error::other)
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

impl VcpuHandle {
    /// The handle of a thread that runs a vCPU ([`run_confined`]).
    pub fn new(thread: JoinHandle<()>) -> VcpuHandle {
        VcpuHandle { thread }
    }

    /// Makes the thread leave KVM_RUN soon; it then sees the stop flag.
    pub fn kick(&self) {
        // A thread that already exited can't be signalled; that's fine.
        let _ = self.thread.kill(kick_signal());
    }

    pub fn join(self) {
        if self.thread.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

/// Starts `vcpu` on a thread named `vcpu<index>`.
pub fn spawn(vcpu: VcpuFd, index: u8, ctx: VcpuContext) -> io::Result<VcpuHandle> {
    let thread = crate::placement::spawn_beside(&format!("vcpu{index}"), move || {
        run_loop(vcpu, index, &ctx)
    })?;
    Ok(VcpuHandle { thread })
}

fn run_loop(vcpu: VcpuFd, index: u8, ctx: &VcpuContext) {
    if let Err(e) = sandbox::install(ThreadKind::Vcpu, ctx.seccomp) {
        ctx.stop
            .request(StopReason::Fatal(format!("vCPU {index}: {e}")));
        return;
    }
    run_confined(vcpu, index, ctx);
}

/// Unblocks the kick signal in this thread (a real-time signal, which
/// nix's `Signal` cannot name).
fn unblock_kick() -> io::Result<()> {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset, which
    // initialises it; sigaddset takes a signal number in range (SIGRTMIN).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        set
    };
    // SAFETY: `set` is initialised; the old mask is not asked for.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

/// Runs `vcpu` on this thread, already under the vCPU filter: waits for the
/// start gate, then KVM_RUN until the VM stops. The kick signal is
/// unblocked here (a thread started with every signal blocked, as vCPU 0's
/// is, takes kicks from now on).
pub fn run_confined(mut vcpu: VcpuFd, index: u8, ctx: &VcpuContext) {
    if let Err(e) = unblock_kick() {
        ctx.stop.request(StopReason::Fatal(format!(
            "vCPU {index}: the kick signal: {e}"
        )));
        return;
    }
    if !ctx.start.wait() {
        return;
    }
    KVM_RUN.with(|cell| cell.set(vcpu.get_kvm_run() as *mut kvm_run));
    // KVM_RUNs in a row that failed on guest memory (see memory_fault).
    let mut faults = 0u32;
    while !ctx.stop.is_stopping() {
        if let Some(reason) = run_once(&mut vcpu, index, ctx, &mut faults) {
            ctx.stop.request(reason);
        }
    }
    KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
}

/// One KVM_RUN and the handling of its exit. Returns a reason to stop the VM.
fn run_once(
    vcpu: &mut VcpuFd,
    index: u8,
    ctx: &VcpuContext,
    faults: &mut u32,
) -> Option<StopReason> {
    let c = &ctx.counters;
    let exit = match vcpu.run() {
        Ok(VcpuExit::MemoryFault { gpa, .. }) => {
            return memory_fault(index, Some(gpa), ctx, faults)
        }
        Ok(exit) => {
            *faults = 0;
            exit
        }
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            vcpu.set_kvm_immediate_exit(0);
            c.interrupted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Err(e) if e.errno() == libc::EFAULT => return memory_fault(index, None, ctx, faults),
        Err(e) => {
            return Some(StopReason::Fatal(format!(
                "vCPU {index}: KVM_RUN failed: {e}"
            )))
        }
    };
    match exit {
        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {
            handle_pio(vcpu, ctx);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            c.mmio_read.fetch_add(1, Ordering::Relaxed);
            if !ctx.mmio.read(addr, data) && !ctx.mmio_under.read(addr, data) {
                c.unhandled.fetch_add(1, Ordering::Relaxed);
                ctx.unhandled.note(true, addr, false, data.len());
                data.fill(0xff);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            c.mmio_write.fetch_add(1, Ordering::Relaxed);
            if !ctx.mmio.write(addr, data) && !ctx.mmio_under.write(addr, data) {
                c.unhandled.fetch_add(1, Ordering::Relaxed);
                ctx.unhandled.note(true, addr, true, data.len());
            }
            None
        }
        VcpuExit::Shutdown => Some(StopReason::TripleFault),
        VcpuExit::SystemEvent(kind, _) if kind == KVM_SYSTEM_EVENT_CRASH => Some(
            StopReason::Fatal(format!("vCPU {index}: the guest reported a crash")),
        ),
        VcpuExit::SystemEvent(kind, _) => Some(StopReason::SystemEvent(kind)),
        VcpuExit::InternalError => {
            c.other.fetch_add(1, Ordering::Relaxed);
            // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live union field.
            let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
            let what = match suberror {
                1 => "emulation failure",
                2 => "simultaneous exceptions",
                3 => "delivery event",
                _ => "internal error",
            };
            Some(fatal_at(
                vcpu,
                index,
                &format!("KVM {what} (KVM_EXIT_INTERNAL_ERROR suberror {suberror})"),
            ))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            c.other.fetch_add(1, Ordering::Relaxed);
            Some(fatal_at(
                vcpu,
                index,
                &format!("KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY reason {reason:#x} on host CPU {cpu})"),
            ))
        }
        other => {
            c.other.fetch_add(1, Ordering::Relaxed);
            let name = format!("{other:?}");
            Some(fatal_at(
                vcpu,
                index,
                &format!("unexpected KVM exit {name}"),
            ))
        }
    }
}

/// How long a vCPU waits, in 1 ms steps, for guest memory that KVM could
/// not reach to be unmapped by the event loop (devices/ivshmem/backing.rs
/// follows shared memory that was truncated) before giving up.
const MEMORY_FAULT_PATIENCE: u32 = 500;

/// KVM_RUN could not reach guest memory (hardware KVM: the host pages
/// behind a memory slot are gone — shared memory truncated under us). The
/// event loop shrinks the slot as soon as it sees the truncation; retry
/// until then, and stop the VM with one clear line if it never happens.
/// `faults`: the KVM_RUNs in a row that failed so, this one included.
fn memory_fault(
    index: u8,
    gpa: Option<u64>,
    ctx: &VcpuContext,
    faults: &mut u32,
) -> Option<StopReason> {
    ctx.counters.memory_faults.fetch_add(1, Ordering::Relaxed);
    *faults += 1;
    if *faults < MEMORY_FAULT_PATIENCE {
        std::thread::sleep(std::time::Duration::from_millis(1));
        return None;
    }
    let at = gpa.map_or(String::new(), |g| format!(" at guest address {g:#x}"));
    Some(StopReason::Fatal(format!(
        "vCPU {index}: KVM cannot reach guest memory{at} (host memory behind it is gone: was shared memory truncated?) and nothing unmapped it within {MEMORY_FAULT_PATIENCE} ms"
    )))
}

fn fatal_at(vcpu: &VcpuFd, index: u8, what: &str) -> StopReason {
    let rip = vcpu
        .get_regs()
        .map(|r| format!("{:#x}", r.rip))
        .unwrap_or_else(|_| "unknown".to_string());
    StopReason::Fatal(format!("vCPU {index}: {what} at guest RIP {rip}"))
}

/// Port I/O, including string I/O (`rep outsb`): `count` accesses of `size`
/// bytes each, laid out back to back in the kvm_run page.
fn handle_pio(vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    let run = vcpu.get_kvm_run();
    // SAFETY: called only for KVM_EXIT_IO, so `io` is the live union field.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size);
    let total = size * io.count as usize;
    let offset = io.data_offset as usize;
    // The data lives inside the kvm_run mapping; never trust an offset that
    // would leave it.
    if size == 0
        || offset < std::mem::size_of::<kvm_run>()
        || offset.saturating_add(total) > ctx.run_mmap_size
    {
        ctx.counters.other.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let base = run as *mut kvm_run as *mut u8;
    // SAFETY: bounds checked above against the size of the kvm_run mmap.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), total) };
    let port = u64::from(io.port);
    let out = u32::from(io.direction) == KVM_EXIT_IO_OUT;
    let c = &ctx.counters;
    for chunk in data.chunks_mut(size) {
        if out {
            c.pio_out.fetch_add(1, Ordering::Relaxed);
            if !ctx.pio.write(port, chunk) {
                c.unhandled.fetch_add(1, Ordering::Relaxed);
                ctx.unhandled.note(false, port, true, size);
            }
        } else {
            c.pio_in.fetch_add(1, Ordering::Relaxed);
            if !ctx.pio.read(port, chunk) {
                c.unhandled.fetch_add(1, Ordering::Relaxed);
                ctx.unhandled.note(false, port, false, size);
                chunk.fill(0xff);
            }
        }
    }
}
