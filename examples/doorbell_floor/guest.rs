// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The floor's guest: memory layout, code, descriptor tables and the vCPU's
//! long-mode entry state.

use kvm_bindings::kvm_segment;
use kvm_ioctls::VcpuFd;

pub use crate::common::GuestRam;
use crate::{ioctl, FloorError};

// Guest-physical layout, the same in both VMs.
const GDT: u64 = 0x1000;
const IDT: u64 = 0x2000;
const TSS: u64 = 0x3000;
pub const COUNT: u64 = 0x4000; // u32 bumped by the interrupt handler
/// The `testguest` loop's timeout word (stays 0: the floor sets no timer).
const TIMER: u64 = 0x4050;
const PML4: u64 = 0x8000;
const PDPT: u64 = 0x9000;
const PD: u64 = 0xa000; // four page directories: identity map of 0..4 GiB
const CODE: u64 = 0x10000;
const STACK_TOP: u64 = 0x80000;
pub const SAMPLES: u64 = 0x100000; // u32 cycles per round (ping)
/// Where the doorbell register would be (BAR0 + 12); nothing backs it, KVM
/// matches writes there with the ioeventfd.
pub const DOORBELL: u64 = 0xc000_000c;
const LAPIC_EOI: u64 = 0xfee0_00b0;
/// LAPIC spurious-vector register: offset, and "enabled, spurious vector 0xff".
const APIC_SVR: usize = 0xf0;
const LAPIC_SVR_ON: u32 = 0x1ff;
pub const EXIT_PORT: u16 = 0xf4;
/// The MSI vector the doorbell raises, as the test guest's entry 0.
pub const VECTOR: u32 = 0x40;
pub const GSI: u32 = 24;

const SEL_CODE: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_TSS: u16 = 0x18;

// The guest. Entry with rbx = doorbell address, r9d = the value to ring,
// r10 = samples, r11d = rounds, r12 = 1 for ping, 0 for pong; interrupts off.
// Every round's instructions run emulated (guest kernel mode on PVM, about
// 1 us per memory access), so the default loop is the shortest that does
// what the test guest does. The second entry, `..._tg`, is the test guest's
// own round (its rounds_hlt, instruction for instruction: after a wakeup it
// checks the counter first and reads its timeout word only if the counter
// did not move), to tell guest-code cost from VMM cost.
core::arch::global_asm!(
    ".pushsection .rodata.ivvmm_floor_guest, \"a\"",
    ".balign 16",
    ".globl ivvmm_floor_guest_start",
    "ivvmm_floor_guest_start:",
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
    ".globl ivvmm_floor_guest_tg",
    "ivvmm_floor_guest_tg:",
    "    xorl %edi, %edi",
    "    testq %r12, %r12",
    "    jz .Ltg_pong_round",
    ".Ltg_ping_round:",
    "    leal 1(%rdi), %ecx",
    "    rdtsc",
    "    shlq $32, %rdx",
    "    movl %eax, %eax",
    "    orq %rax, %rdx",
    "    movq %rdx, %r8",
    "    movl %r9d, (%rbx)", // ring pong
    "    cli",
    ".Ltg_ping_wait:",
    "    cmpl %ecx, {count}",
    "    jae .Ltg_ping_got",
    "    sti",
    "    hlt",
    "    cli",
    "    cmpl %ecx, {count}",
    "    jae .Ltg_ping_got",
    "    cmpl $0, {v_timer}", // the test guest's timeout look, only if not ours
    "    je .Ltg_ping_wait",
    "    jmp .Ldone",
    ".Ltg_ping_got:",
    "    rdtsc",
    "    subl %r8d, %eax",
    "    movl %eax, (%r10,%rdi,4)",
    "    movl %ecx, %edi",
    "    cmpl %r11d, %edi",
    "    jb .Ltg_ping_round",
    "    jmp .Ldone",
    ".Ltg_pong_round:",
    "    leal 1(%rdi), %ecx",
    "    cli",
    ".Ltg_pong_wait:",
    "    cmpl %ecx, {count}",
    "    jae .Ltg_pong_got",
    "    sti",
    "    hlt",
    "    cli",
    "    cmpl %ecx, {count}",
    "    jae .Ltg_pong_got",
    "    cmpl $0, {v_timer}",
    "    je .Ltg_pong_wait",
    "    jmp .Ldone",
    ".Ltg_pong_got:",
    "    movl %r9d, (%rbx)", // ring ping back
    "    movl %ecx, %edi",
    "    cmpl %r11d, %edi",
    "    jb .Ltg_pong_round",
    "    jmp .Ldone",
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
    eoi = const LAPIC_EOI,
    count = const COUNT,
    port = const EXIT_PORT,
    v_timer = const TIMER,
    options(att_syntax),
);

extern "C" {
    static ivvmm_floor_guest_start: u8;
    static ivvmm_floor_guest_tg: u8;
    static ivvmm_floor_guest_handler: u8;
    static ivvmm_floor_guest_end: u8;
}

/// Which round loop the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Loop {
    /// The shortest loop doing what the test guest does (the floor).
    Minimal,
    /// The test guest's rounds_hlt, instruction for instruction.
    Testguest,
}

/// The guest code blob, and the offsets of the handler and of each entry.
struct Code {
    bytes: &'static [u8],
    handler: u64,
    testguest: u64,
}

fn guest_code() -> Code {
    // SAFETY: the symbols are labels in one contiguous read-only blob emitted
    // by the global_asm! above, start <= tg, handler <= end; the bytes live
    // for the whole program.
    unsafe {
        let start = std::ptr::addr_of!(ivvmm_floor_guest_start);
        let tg = std::ptr::addr_of!(ivvmm_floor_guest_tg);
        let handler = std::ptr::addr_of!(ivvmm_floor_guest_handler);
        let end = std::ptr::addr_of!(ivvmm_floor_guest_end);
        Code {
            bytes: std::slice::from_raw_parts(start, end.offset_from(start) as usize),
            handler: handler.offset_from(start) as u64,
            testguest: tg.offset_from(start) as u64,
        }
    }
}

/// Where the vCPU starts for `kind`.
fn entry(kind: Loop) -> u64 {
    match kind {
        Loop::Minimal => CODE,
        Loop::Testguest => CODE + guest_code().testguest,
    }
}
impl GuestRam {
    /// The handler's counter, read while the vCPU runs (for the stall watchdog).
    pub fn count(&self) -> u32 {
        self.read_u32_volatile(COUNT)
    }
}

/// GDT, IDT (one gate: VECTOR), TSS, identity page tables, the code.
pub fn write_tables(ram: &mut GuestRam) {
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
    let code = guest_code();
    ram.write(CODE, code.bytes);
    ram.write(TIMER, &0u32.to_le_bytes());
    let h = CODE + code.handler;
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

pub fn setup_vcpu(vcpu: &VcpuFd, kind: Loop, ping: bool, rounds: u32) -> Result<(), FloorError> {
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
        rip: entry(kind),
        rsp: STACK_TOP,
        rflags: 2,
        rbx: DOORBELL,
        r9: doorbell_value(ping),
        r10: SAMPLES,
        r11: u64::from(rounds),
        r12: u64::from(ping),
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(ioctl("set regs"))?;
    // The LAPIC is software-enabled here, not by the guest: a disabled LAPIC
    // drops fixed interrupts, so a guest enabling its own could lose the
    // peer's first doorbell if the peer started first.
    let mut lapic = vcpu.get_lapic().map_err(ioctl("read the LAPIC"))?;
    for (i, b) in LAPIC_SVR_ON.to_le_bytes().iter().enumerate() {
        lapic.regs[APIC_SVR + i] = *b as std::os::raw::c_char;
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("enable the LAPIC"))
}

/// What each side rings, as the test guest does: (peer id << 16) | vector
/// 0, where ping is peer 0 and pong peer 1.
pub fn doorbell_value(ping: bool) -> u64 {
    let peer: u64 = if ping { 1 } else { 0 };
    peer << 16
}
