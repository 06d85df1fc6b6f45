// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The boot floor: the least a VMM must do before a guest's first
//! instruction writes the serial port, with no VMM around it.
//!
//! Opens /dev/kvm, creates a VM with the same guest memory as ivvmm (one
//! anonymous mapping, registered before the irqchip exists, as ivvmm does)
//! and the same in-kernel irqchip (TSS address, IRQCHIP), one vCPU in real
//! mode at 0x1000, where three instructions write 'F' to COM1's data port
//! (0x3f8): `mov $0x3f8,%dx; mov $'F',%al; out %al,%dx`. The byte goes to
//! stdout as it arrives; a newline follows and the guest leaves through the
//! debug exit port (0xf4), whose byte is the exit status.
//!
//!     cargo run --release --example boot_floor -- --mem 256M
//!
//! `scripts/bench boot` times it with `boot_timer --pattern F` against
//! ivvmm booting guest/testguest's `first` image, whose first instructions
//! are the same three.

use std::io::Write;

use clap::Parser;

mod common;
use common::GuestRam;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

#[derive(Parser)]
#[command(about = "Bare-KVM boot floor: VM creation to the guest's first serial byte")]
struct Args {
    /// Guest memory, with a K/M/G suffix (as ivvmm's --mem).
    #[arg(long, default_value = "256M")]
    mem: String,
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
    #[error("--mem {0}: not a size like 256M (at least 1M)")]
    Size(String),
    #[error("cannot map {0} bytes of guest memory: {1}")]
    Memory(usize, std::io::Error),
    #[error("the guest stopped unexpectedly: {0}")]
    Guest(String),
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Ioctl { what, source }
}

/// ivvmm's TSS address (three pages below the 4 GiB boundary's hole).
const TSS_ADDRESS: usize = 0xfffb_d000;
/// Where the guest code sits; real mode, CS base 0.
const CODE_ADDR: u64 = 0x1000;
const COM1: u16 = 0x3f8;
const EXIT_PORT: u16 = 0xf4;

/// mov $0x3f8,%dx; mov $'F',%al; out %al,%dx; mov $'\n',%al; out %al,%dx;
/// mov $0xf4,%dx; xor %al,%al; out %al,%dx; hlt (16-bit code).
const CODE: [u8; 18] = [
    0xba, 0xf8, 0x03, 0xb0, b'F', 0xee, 0xb0, b'\n', 0xee, 0xba, 0xf4, 0x00, 0x30, 0xc0, 0xee,
    0xf4, 0xeb, 0xfd,
];

fn parse_size(s: &str) -> Option<usize> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: usize = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&v| v >= 1 << 20)
}

fn run(args: Args) -> Result<u8, FloorError> {
    let len = parse_size(&args.mem).ok_or_else(|| FloorError::Size(args.mem.clone()))?;
    let kvm = Kvm::new().map_err(FloorError::Kvm)?;
    // Mapped the way vm-memory maps ivvmm's RAM.
    let mut ram =
        GuestRam::new(len, libc::MAP_NORESERVE).map_err(|e| FloorError::Memory(len, e))?;
    ram.write(CODE_ADDR, &CODE);
    let vm = kvm.create_vm().map_err(ioctl("create a VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: len as u64,
        userspace_addr: ram.host_addr(),
    };
    // SAFETY: the region is our live mapping of `len` bytes, which outlives
    // the VM: `ram` is declared before `vm` and so dropped after it.
    unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("add guest memory"))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(ioctl("set the TSS address"))?;
    vm.create_irq_chip().map_err(ioctl("create the irqchip"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(ioctl("create a vCPU"))?;
    let mut sregs = vcpu.get_sregs().map_err(ioctl("get sregs"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(ioctl("set sregs"))?;
    let mut regs = vcpu.get_regs().map_err(ioctl("get regs"))?;
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(ioctl("set regs"))?;

    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(COM1, data)) => {
                // Unbuffered: the byte leaves when the guest writes it.
                let _ = out.write_all(data).and_then(|()| out.flush());
            }
            Ok(VcpuExit::IoOut(EXIT_PORT, data)) => return Ok(data.first().copied().unwrap_or(0)),
            Ok(VcpuExit::Hlt) => return Err(FloorError::Guest("halted".into())),
            Ok(other) => return Err(FloorError::Guest(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(FloorError::Guest(format!("KVM_RUN: {e}"))),
        }
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(status) => std::process::ExitCode::from(status),
        Err(e) => {
            eprintln!("boot_floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
