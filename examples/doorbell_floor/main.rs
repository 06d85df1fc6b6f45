// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The doorbell floor: the fastest ping-pong the KVM doorbell path allows,
//! with no VMM around it.
//!
//! Two one-vCPU VMs in this one process, each with the in-kernel irqchip.
//! VM A's vCPU writes a doorbell value to an MMIO address that KVM matches
//! with an ioeventfd; that eventfd is an irqfd on an MSI route into VM B, so
//! B's vCPU takes vector 0x40 (and rings back the same way). Nothing in this
//! process wakes per round: the vCPU threads sit in KVM_RUN until the guests
//! leave through port 0xf4 at the end. The guest loop is the test guest's
//! `pingpong wait=hlt` round, minimal: ring, `cli; while (count < i+1)
//! { sti; hlt; cli }`, and the handler does EOI, count, iretq.
//!
//!     cargo run --release --example doorbell_floor -- --rounds 10000 --out floor.txt
//!
//! Prints p50/p90/p99/max of the round trip (ping's rdtsc cycles) and the
//! exits each vCPU made to userspace, and writes the raw samples with --out.

#[path = "../common/mod.rs"]
mod common;
mod guest;
mod vm;

use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use clap::Parser;
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;

use common::{tsc_per_us, write_samples, Summary};
use guest::{GuestRam, Loop, SAMPLES};
use vm::{build_vm, run_vcpu, Control, Exits};

#[derive(Parser)]
#[command(
    about = "Bare-KVM doorbell ping-pong between two VMs: the floor ivvmm is measured against"
)]
struct Args {
    /// Round trips to measure.
    #[arg(long, default_value_t = 10_000)]
    rounds: u32,
    /// Write ping's raw samples (cycles, one per line) here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The guest's round loop: `minimal` is the floor; `testguest` runs the
    /// test guest's own loop (same VMs) to show what its extra instructions cost.
    #[arg(long, value_enum, default_value_t = Loop::Minimal)]
    guest: Loop,
    /// Seconds without a round before the vCPUs are described (a stall);
    /// after three stalls in a row the run fails.
    #[arg(long, default_value_t = 2)]
    stall_secs: u64,
}

#[derive(Debug, thiserror::Error)]
enum FloorError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM refused to {what}: {source}")]
    Ioctl {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("cannot map {0} bytes of guest memory: {1}")]
    Memory(usize, std::io::Error),
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("{vm}: vCPU stopped unexpectedly: {what}")]
    Vcpu { vm: &'static str, what: String },
    #[error("cannot write the samples to {0}: {1}")]
    Output(PathBuf, std::io::Error),
    #[error("--rounds must be 1..=1000000")]
    Rounds,
    #[error("cannot install the signal handler that interrupts KVM_RUN: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Ioctl { what, source }
}
fn run(args: &Args) -> Result<(), FloorError> {
    if args.rounds == 0 || args.rounds > 1_000_000 {
        return Err(FloorError::Rounds);
    }
    let tsc = tsc_per_us(200);
    // The handler does nothing; it only makes the watchdog's signal
    // interrupt KVM_RUN (EINTR) instead of killing the process.
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(FloorError::Signal)?;
    let kvm = Kvm::new().map_err(FloorError::Kvm)?;
    let efd = || EventFd::new(libc::EFD_NONBLOCK).map_err(FloorError::EventFd);
    let (to_pong, to_ping) = (efd()?, efd()?);
    let (_vm_a, vcpu_a, ram_a) = build_vm(&kvm, args.guest, true, args.rounds, &to_ping, &to_pong)?;
    let (_vm_b, vcpu_b, ram_b) =
        build_vm(&kvm, args.guest, false, args.rounds, &to_pong, &to_ping)?;

    let ctl_a = std::sync::Arc::new(Control::default());
    let ctl_b = std::sync::Arc::new(Control::default());
    let (ca, cb) = (ctl_a.clone(), ctl_b.clone());
    let pong = thread::spawn(move || run_vcpu("pong", vcpu_b, &cb));
    let ping = thread::spawn(move || run_vcpu("ping", vcpu_a, &ca));
    let stalls = watchdog(args, [&ram_a, &ram_b], [(&ping, &*ctl_a), (&pong, &*ctl_b)]);
    let join = |h: thread::JoinHandle<Result<Exits, FloorError>>, vm| {
        h.join().unwrap_or_else(|_| {
            Err(FloorError::Vcpu {
                vm,
                what: "thread panicked".into(),
            })
        })
    };
    let ping_exits = join(ping, "ping")?;
    let pong_exits = join(pong, "pong")?;

    let samples: Vec<u64> = (0..u64::from(args.rounds))
        .map(|i| u64::from(ram_a.read_u32(SAMPLES + 4 * i)))
        .collect();
    if let Some(path) = &args.out {
        write_samples(path, &samples).map_err(|e| FloorError::Output(path.clone(), e))?;
    }
    let s = Summary::of(&samples).ok_or(FloorError::Rounds)?;
    let us = |c: u64| c as f64 / tsc;
    let mut report = format!(
        "floor guest={:?} rounds={} p50={} p90={} p99={} max={} unit=cycles tsc_per_us={tsc:.1}\n",
        args.guest, s.n, s.p50, s.p90, s.p99, s.max
    );
    report += &format!(
        "floor p50={:.1}us p90={:.1}us p99={:.1}us max={:.1}us\n",
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.max)
    );
    for (name, e) in [("ping", &ping_exits), ("pong", &pong_exits)] {
        report += &format!(
            "floor exits vm={name} io={} mmio={} other={} interrupted={}\n",
            e.io, e.mmio, e.other, e.interrupted
        );
    }
    report += &format!("floor stalls={stalls}\n");
    // A reader that stops early (| head) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes());
    Ok(())
}

fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

type VcpuThread = thread::JoinHandle<Result<Exits, FloorError>>;

/// Waits for both vCPU threads. When neither guest's interrupt count moves
/// for --stall-secs, that is a stall: both vCPUs are kicked out of KVM_RUN
/// to print their state (then run on); three stalls in a row abort the run.
/// Returns the number of stalls.
fn watchdog(args: &Args, rams: [&GuestRam; 2], vcpus: [(&VcpuThread, &Control); 2]) -> u32 {
    let tick = Duration::from_millis(100);
    let ticks_per_stall = (args.stall_secs * 10).max(1);
    let (mut last, mut still, mut stalls, mut in_a_row) = ((0, 0), 0, 0, 0);
    let kick = |t: &VcpuThread| {
        // SAFETY: the thread has not been joined (we hold its handle), so
        // its pthread_t is valid; the signal has a no-op handler.
        unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
    };
    while vcpus.iter().any(|(t, _)| !t.is_finished()) {
        thread::sleep(tick);
        let now = (rams[0].count(), rams[1].count());
        if now != last {
            (last, still, in_a_row) = (now, 0, 0);
            continue;
        }
        still += 1;
        if still < ticks_per_stall {
            continue;
        }
        still = 0;
        stalls += 1;
        in_a_row += 1;
        eprintln!(
            "floor: stall: no interrupt for {} s (ping has {}, pong {}); vCPU state:",
            args.stall_secs, now.0, now.1
        );
        for (t, ctl) in vcpus {
            if !t.is_finished() {
                ctl.describe.store(true, Ordering::SeqCst);
                ctl.abort.store(in_a_row >= 3, Ordering::SeqCst);
                kick(t);
            }
        }
    }
    stalls
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doorbell_floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
