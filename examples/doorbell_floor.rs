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

mod common;

use std::path::PathBuf;
use std::thread;

use clap::Parser;
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_segment, kvm_userspace_memory_region, KvmIrqRouting,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use common::{tsc_per_us, write_samples, Summary};

// Guest-physical layout, the same in both VMs.
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
const COUNT: u64 = 0x4000; // u32 bumped by the interrupt handler
const PML4: u64 = 0x8000;
const PDPT: u64 = 0x9000;
const PD: u64 = 0xa000; // four page directories: identity map of 0..4 GiB
const CODE: u64 = 0x10000;
const STACK_TOP: u64 = 0x80000;
const SAMPLES: u64 = 0x100000; // u32 cycles per round (ping)
/// Where the doorbell register would be (BAR0 + 12); nothing backs it, KVM
/// matches writes there with the ioeventfd.
const DOORBELL: u64 = 0xc000_000c;
const LAPIC_SVR: u64 = 0xfee0_00f0;
const LAPIC_EOI: u64 = 0xfee0_00b0;
const EXIT_PORT: u16 = 0xf4;
/// The MSI vector the doorbell raises, as the test guest's entry 0.
const VECTOR: u32 = 0x40;
const GSI: u32 = 24;

const SEL_CODE: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_TSS: u16 = 0x18;

// The guest. Entry with rbx = doorbell address, r9d = the value to ring,
// r10 = samples, r11d = rounds, r12 = 1 for ping, 0 for pong; interrupts off.
// Every round's instructions run emulated (guest kernel mode on PVM), so
// this is the shortest loop that does what the test guest does.
core::arch::global_asm!(
    ".pushsection .rodata.ivvmm_floor_guest, \"a\"",
    ".balign 16",
    ".globl ivvmm_floor_guest_start",
    "ivvmm_floor_guest_start:",
    "    movl ${svr}, %eax",
    "    movl $0x1ff, (%rax)", // LAPIC on, spurious vector 0xff
    "    xorl %edi, %edi",
    "    testq %r12, %r12",
    "    jz .Lpong_round",
    ".Lping_round:",
    "    leal 1(%rdi), %ecx",
    "    rdtsc",
    "    shlq $32, %rdx",
    "    movl %eax, %eax",
    "    orq %rax, %rdx",
    "    movq %rdx, %r8",
    "    movl %r9d, (%rbx)", // ring pong
    "    cli",
    ".Lping_wait:",
    "    cmpl %ecx, {count}",
    "    jae .Lping_got",
    "    sti",
    "    hlt",
    "    cli",
    "    jmp .Lping_wait",
    ".Lping_got:",
    "    rdtsc",
    "    subl %r8d, %eax",
    "    movl %eax, (%r10,%rdi,4)",
    "    movl %ecx, %edi",
    "    cmpl %r11d, %edi",
    "    jb .Lping_round",
    "    jmp .Ldone",
    ".Lpong_round:",
    "    leal 1(%rdi), %ecx",
    "    cli",
    ".Lpong_wait:",
    "    cmpl %ecx, {count}",
    "    jae .Lpong_got",
    "    sti",
    "    hlt",
    "    cli",
    "    jmp .Lpong_wait",
    ".Lpong_got:",
    "    movl %r9d, (%rbx)", // ring ping back
    "    movl %ecx, %edi",
    "    cmpl %r11d, %edi",
    "    jb .Lpong_round",
    ".Ldone:",
    "    movw ${port}, %dx",
    "    xorl %eax, %eax",
    "    outb %al, %dx",
    "    hlt",
    "    jmp .Ldone",
    ".globl ivvmm_floor_guest_handler",
    "ivvmm_floor_guest_handler:", // the test guest's msix_stub, instruction for instruction
    "    pushq %rax",
    "    movl ${eoi}, %eax",
    "    movl $0, (%rax)",
    "    incl {count}",
    "    popq %rax",
    "    iretq",
    ".globl ivvmm_floor_guest_end",
    "ivvmm_floor_guest_end:",
    ".popsection",
    svr = const LAPIC_SVR,
    eoi = const LAPIC_EOI,
    count = const COUNT,
    port = const EXIT_PORT,
    options(att_syntax),
);

extern "C" {
    static ivvmm_floor_guest_start: u8;
    static ivvmm_floor_guest_handler: u8;
    static ivvmm_floor_guest_end: u8;
}

/// The guest code and the handler's offset in it.
fn guest_code() -> (&'static [u8], u64) {
    // SAFETY: the three symbols are labels in one contiguous read-only blob
    // emitted by the global_asm! above, start <= handler <= end; the bytes
    // live for the whole program.
    unsafe {
        let start = std::ptr::addr_of!(ivvmm_floor_guest_start);
        let handler = std::ptr::addr_of!(ivvmm_floor_guest_handler);
        let end = std::ptr::addr_of!(ivvmm_floor_guest_end);
        let len = end.offset_from(start) as usize;
        (
            std::slice::from_raw_parts(start, len),
            handler.offset_from(start) as u64,
        )
    }
}

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
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> FloorError {
    move |source| FloorError::Ioctl { what, source }
}

/// Anonymous guest RAM at guest-physical 0.
struct GuestRam {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this struct; the host touches
// it only before the vCPU starts and after it has stopped.
unsafe impl Send for GuestRam {}

impl GuestRam {
    fn new(len: usize) -> Result<GuestRam, FloorError> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(FloorError::Memory(len, std::io::Error::last_os_error()));
        }
        Ok(GuestRam {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        assert!(start + bytes.len() <= self.len, "layout bug: {gpa:#x}");
        // SAFETY: bounds checked above; the mapping is ours and writable.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(start), bytes.len()) }
    }

    fn write_u64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes());
    }

    fn read_u32(&self, gpa: u64) -> u32 {
        let start = gpa as usize;
        assert!(start + 4 <= self.len, "layout bug: {gpa:#x}");
        let mut b = [0u8; 4];
        // SAFETY: bounds checked above; the vCPU has stopped.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), b.as_mut_ptr(), 4) }
        u32::from_le_bytes(b)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in new(); the VM using it is gone.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// GDT, IDT (one gate: VECTOR), TSS, identity page tables, the code.
fn write_tables(ram: &mut GuestRam) {
    let gdt = [
        0,
        0x00af_9b00_0000_ffff,                               // 64-bit code
        0x00cf_9300_0000_ffff,                               // flat data
        0x0000_8b00_0000_0067 | ((TSS & 0x00ff_ffff) << 16), // busy TSS at TSS (< 16 MiB)
        0,
    ];
    for (i, d) in gdt.iter().enumerate() {
        ram.write_u64(GDT + 8 * i as u64, *d);
    }
    let (code, handler) = guest_code();
    ram.write(CODE, code);
    let h = CODE + handler;
    let gate_lo =
        (h & 0xffff) | (u64::from(SEL_CODE) << 16) | (0x8e << 40) | ((h & 0xffff_0000) << 32);
    ram.write_u64(IDT + 16 * u64::from(VECTOR), gate_lo);
    ram.write_u64(IDT + 16 * u64::from(VECTOR) + 8, h >> 32);
    ram.write_u64(PML4, PDPT | 3);
    for i in 0..4u64 {
        ram.write_u64(PDPT + 8 * i, (PD + 0x1000 * i) | 3);
        for j in 0..512u64 {
            let phys = (i * 512 + j) << 21;
            ram.write_u64(PD + 0x1000 * i + 8 * j, phys | 0x83);
        }
    }
}

fn segment(selector: u16, type_: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn setup_vcpu(vcpu: &VcpuFd, ping: bool, rounds: u32) -> Result<(), FloorError> {
    let mut sregs = vcpu.get_sregs().map_err(ioctl("read sregs"))?;
    sregs.cs = segment(SEL_CODE, 0xb, true);
    let data = segment(SEL_DATA, 0x3, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        base: TSS,
        limit: 0x67,
        selector: SEL_TSS,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 5 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.cr0 = 1 | (1 << 4) | (1 << 31); // PE, ET, PG
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.efer = (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).map_err(ioctl("set sregs"))?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rsp: STACK_TOP,
        rflags: 2,
        rbx: DOORBELL,
        r9: doorbell_value(ping),
        r10: SAMPLES,
        r11: u64::from(rounds),
        r12: u64::from(ping),
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("set regs"))
}

/// What each side rings, as the test guest does: (peer id << 16) | vector
/// 0, where ping is peer 0 and pong peer 1.
fn doorbell_value(ping: bool) -> u64 {
    let peer: u64 = if ping { 1 } else { 0 };
    peer << 16
}

/// One VM: memory, irqchip, the MSI route bound to `incoming`, the doorbell
/// ioeventfd signalling `outgoing`, and its vCPU in long mode.
fn build_vm(
    kvm: &Kvm,
    ping: bool,
    rounds: u32,
    incoming: &EventFd,
    outgoing: &EventFd,
) -> Result<(VmFd, VcpuFd, GuestRam), FloorError> {
    let mem_len = (SAMPLES as usize + 4 * rounds as usize).next_multiple_of(2 << 20);
    let mut ram = GuestRam::new(mem_len)?;
    write_tables(&mut ram);
    let vm = kvm.create_vm().map_err(ioctl("create a VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem_len as u64,
        userspace_addr: ram.ptr as u64,
    };
    // SAFETY: the region is our live mapping of mem_len bytes; it outlives
    // the VM (GuestRam is returned with it and dropped after the VM fd).
    unsafe { vm.set_user_memory_region(region) }.map_err(ioctl("add guest memory"))?;
    vm.create_irq_chip().map_err(ioctl("create the irqchip"))?;
    let mut route = kvm_irq_routing_entry {
        gsi: GSI,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    route.u.msi.address_lo = 0xfee0_0000; // APIC id 0, physical
    route.u.msi.data = VECTOR; // fixed, edge
    let routing = KvmIrqRouting::from_entries(&[route]).map_err(|_| FloorError::Ioctl {
        what: "build the routing table",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    vm.set_gsi_routing(&routing)
        .map_err(ioctl("set the MSI route"))?;
    vm.register_irqfd(incoming, GSI)
        .map_err(ioctl("attach the irqfd"))?;
    vm.register_ioevent(
        outgoing,
        &IoEventAddress::Mmio(DOORBELL),
        doorbell_value(ping) as u32,
    )
    .map_err(ioctl("register the doorbell ioeventfd"))?;
    let vcpu = vm.create_vcpu(0).map_err(ioctl("create a vCPU"))?;
    setup_vcpu(&vcpu, ping, rounds)?;
    Ok((vm, vcpu, ram))
}

/// Exits to this process, by kind; a floor run should show only the final `io`.
#[derive(Default, Debug)]
struct Exits {
    io: u64,
    mmio: u64,
    other: u64,
    interrupted: u64,
}

fn run_vcpu(name: &'static str, mut vcpu: VcpuFd) -> Result<Exits, FloorError> {
    let mut exits = Exits::default();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(EXIT_PORT, _)) => {
                exits.io += 1;
                return Ok(exits);
            }
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => exits.io += 1,
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                exits.mmio += 1;
            }
            Ok(VcpuExit::MmioWrite(..)) => exits.mmio += 1,
            Ok(VcpuExit::Shutdown) => {
                let regs = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
                return Err(FloorError::Vcpu {
                    vm: name,
                    what: format!("triple fault near rip={regs:#x}"),
                });
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                return Err(FloorError::Vcpu {
                    vm: name,
                    what: format!("entry failed, reason {reason:#x}"),
                })
            }
            Ok(VcpuExit::InternalError) => {
                return Err(FloorError::Vcpu {
                    vm: name,
                    what: "KVM internal error".into(),
                })
            }
            Ok(_) => exits.other += 1,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                exits.interrupted += 1
            }
            Err(e) => {
                return Err(FloorError::Vcpu {
                    vm: name,
                    what: format!("KVM_RUN: {e}"),
                })
            }
        }
    }
}

fn run(args: &Args) -> Result<(), FloorError> {
    if args.rounds == 0 || args.rounds > 1_000_000 {
        return Err(FloorError::Rounds);
    }
    let tsc = tsc_per_us(200);
    let kvm = Kvm::new().map_err(FloorError::Kvm)?;
    let efd = || EventFd::new(libc::EFD_NONBLOCK).map_err(FloorError::EventFd);
    let (to_pong, to_ping) = (efd()?, efd()?);
    let (_vm_a, vcpu_a, ram_a) = build_vm(&kvm, true, args.rounds, &to_ping, &to_pong)?;
    let (_vm_b, vcpu_b, _ram_b) = build_vm(&kvm, false, args.rounds, &to_pong, &to_ping)?;

    let pong = thread::spawn(move || run_vcpu("pong", vcpu_b));
    let ping = thread::spawn(move || run_vcpu("ping", vcpu_a));
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
    println!(
        "floor rounds={} p50={} p90={} p99={} max={} unit=cycles tsc_per_us={tsc:.1}",
        s.n, s.p50, s.p90, s.p99, s.max
    );
    println!(
        "floor p50={:.1}us p90={:.1}us p99={:.1}us max={:.1}us",
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.max)
    );
    for (name, e) in [("ping", &ping_exits), ("pong", &pong_exits)] {
        println!(
            "floor exits vm={name} io={} mmio={} other={} interrupted={}",
            e.io, e.mmio, e.other, e.interrupted
        );
    }
    Ok(())
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
