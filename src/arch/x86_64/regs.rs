// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Boot-time vCPU state: GDT, identity page tables, segment registers, MSRs, FPU, LAPIC.
//!
//! [`setup_boot_cpu`] puts the bootstrap vCPU at the kernel's entry point in
//! the mode its boot protocol asks for: 64-bit long mode with identity-mapped
//! low 4 GiB for the Linux 64-bit protocol, flat 32-bit protected mode with
//! paging off for PVH. [`setup_msrs`], [`setup_fpu`] and [`setup_lapic`] (and
//! `cpuid::setup_cpuid`) apply to every vCPU; application processors otherwise
//! stay in their reset state until the kernel sends INIT/SIPI.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::boot::BootEntry;
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDPT_START, PD_COUNT, PD_START, PML4_START,
};

pub use super::cpuid::{setup_cpuid, CpuidError};
use super::gdt::segment_from_gdt;
pub use super::gdt::{boot_gdt, BOOT_CS, BOOT_DS, BOOT_TSS};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;

/// Bit 1 of RFLAGS is reserved and always 1.
const RFLAGS_RESERVED: u64 = 1 << 1;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled (bit 11) with write-back (6) as the default type. Linux
/// 6.1 turns PAT off when MTRRs are disabled, and then can't give a BAR a
/// write-back mapping or record memory types at all; MMIO still ends up
/// uncached through PAT (UC- in the page tables wins over a WB MTRR).
const MTRR_ENABLED_WRITE_BACK: u64 = (1 << 11) | 6;

const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Why a vCPU could not be put in its boot state. Each names the step.
#[derive(Debug, Error)]
pub enum RegsError {
    #[error("cannot write the boot {what} to guest memory at {addr:#x}; give the VM at least 1 MiB of memory")]
    GuestMemory { what: &'static str, addr: u64 },
    #[error("KVM refused the vCPU {what} registers: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM refused MSR {index:#x} ({written} of {total} boot MSRs set); the host KVM does not support it")]
    Msr {
        index: u32,
        written: usize,
        total: usize,
    },
    #[error("cannot build the MSR list for KVM: {0}")]
    MsrList(vmm_sys_util::fam::Error),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

fn write_u64(
    mem: &GuestMemoryMmap,
    addr: u64,
    val: u64,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|_| RegsError::GuestMemory { what, addr })
}

fn write_gdt_idt(mem: &GuestMemoryMmap, gdt: &[u64]) -> Result<(), RegsError> {
    for (i, entry) in gdt.iter().enumerate() {
        write_u64(mem, GDT_START + 8 * i as u64, *entry, "GDT")?;
    }
    write_u64(mem, IDT_START, 0, "IDT")
}

/// Identity-maps 0..4 GiB with 2 MiB pages: PML4\[0\] → PDPT, PDPT\[0..4\] → PDs.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    write_u64(
        mem,
        PML4_START,
        PDPT_START | PTE_PRESENT | PTE_WRITE,
        "PML4",
    )?;
    for pd in 0..PD_COUNT {
        let pd_addr = PD_START + pd * 0x1000;
        write_u64(
            mem,
            PDPT_START + pd * 8,
            pd_addr | PTE_PRESENT | PTE_WRITE,
            "PDPT",
        )?;
        // One 4 KiB write per PD instead of 512 small ones.
        let mut table = [0u8; 4096];
        for (i, slot) in table.chunks_exact_mut(8).enumerate() {
            let phys = (pd * 512 + i as u64) * PAGE_2M;
            let pde = phys | PTE_PRESENT | PTE_WRITE | PTE_PAGE_SIZE;
            slot.copy_from_slice(&pde.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd_addr))
            .map_err(|_| RegsError::GuestMemory {
                what: "page directory",
                addr: pd_addr,
            })?;
    }
    Ok(())
}

/// Fills the segment and control registers of `sregs` for the boot mode.
pub fn configure_sregs(sregs: &mut kvm_sregs, long_mode: bool) {
    let gdt = boot_gdt(long_mode);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(gdt[usize::from(BOOT_CS / 8)], BOOT_CS);
    let data = segment_from_gdt(gdt[usize::from(BOOT_DS / 8)], BOOT_DS);
    let tss = segment_from_gdt(gdt[usize::from(BOOT_TSS / 8)], BOOT_TSS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    if long_mode {
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
        sregs.cr3 = PML4_START;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
    } else {
        // PVH: protected mode, paging off, CR4 clear.
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
        sregs.cr3 = 0;
        sregs.cr4 = 0;
        sregs.efer = 0;
    }
}

/// General registers at the kernel entry point.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match *entry {
        BootEntry::Linux64 { entry, boot_params } => {
            regs.rip = entry.0;
            regs.rsi = boot_params.0;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry.0;
            regs.rbx = start_info.0;
        }
    }
    regs
}

/// Puts the bootstrap vCPU at the kernel entry: writes the GDT, IDT and (for
/// the 64-bit protocol) the identity page tables, then loads sregs and regs.
pub fn setup_boot_cpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), RegsError> {
    let long_mode = matches!(entry, BootEntry::Linux64 { .. });
    write_gdt_idt(mem, &boot_gdt(long_mode))?;
    if long_mode {
        write_identity_page_tables(mem)?;
    }
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("special"))?;
    configure_sregs(&mut sregs, long_mode);
    vcpu.set_sregs(&sregs).map_err(kvm_err("special"))?;
    vcpu.set_regs(&boot_regs(entry)).map_err(kvm_err("general"))
}

/// The MSRs every vCPU starts with: syscall/sysenter state zeroed, TSC 0,
/// fast strings enabled (Linux uses `rep movs` heavily), MTRRs on with a
/// write-back default.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLED_WRITE_BACK),
    ]
}

/// Sets [`boot_msr_entries`] on `vcpu`.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(RegsError::MsrList)?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_err("model-specific"))?;
    if written != entries.len() {
        // KVM stops at the first MSR it refuses.
        return Err(RegsError::Msr {
            index: entries[written.min(entries.len() - 1)].index,
            written,
            total: entries.len(),
        });
    }
    Ok(())
}

/// x87 control word and MXCSR at their architectural reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("FPU"))
}

fn lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let b = |i: usize| regs[offset + i] as u8;
    u32::from_le_bytes([b(0), b(1), b(2), b(3)])
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Wires LINT0 as ExtINT (the 8259 PIC) and LINT1 as NMI, like a PC BIOS
/// leaves them. Needs the in-kernel irqchip.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("local APIC"))?;
    let lint0 = lapic_reg(&lapic.regs, APIC_LVT_LINT0);
    let lint1 = lapic_reg(&lapic.regs, APIC_LVT_LINT1);
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT0,
        with_delivery_mode(lint0, APIC_MODE_EXTINT),
    );
    set_lapic_reg(
        &mut lapic.regs,
        APIC_LVT_LINT1,
        with_delivery_mode(lint1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&lapic).map_err(kvm_err("local APIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn gdt_and_idt_are_written_to_guest_memory() {
        let m = mem();
        write_gdt_idt(&m, &boot_gdt(true)).unwrap();
        let read = |i: u64| m.read_obj::<u64>(GuestAddress(GDT_START + 8 * i)).unwrap();
        assert_eq!(read(0), 0);
        assert_eq!(read(1), 0);
        assert_eq!(
            read(2),
            0x00af_9b00_0000_ffff,
            "__BOOT_CS must be 64-bit code"
        );
        assert_eq!(
            read(3),
            0x00cf_9300_0000_ffff,
            "__BOOT_DS must be flat data"
        );
        assert_eq!(read(4), 0x0000_8b00_0000_0067);
        assert_eq!(read(5), 0);
        assert_eq!(m.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
    }

    #[test]
    fn page_tables_identity_map_the_low_4g_with_2m_pages() {
        let m = mem();
        write_identity_page_tables(&m).unwrap();
        let r = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(r(PML4_START), PDPT_START | 3);
        assert_eq!(r(PML4_START + 8), 0);
        for pd in 0..4 {
            assert_eq!(r(PDPT_START + 8 * pd), (PD_START + 0x1000 * pd) | 3);
        }
        assert_eq!(r(PDPT_START + 32), 0);
        // Walk a few addresses the way the MMU would.
        for addr in [
            0u64,
            0x10_0000,
            0x3fff_ffff,
            0xC000_1234,
            0xFEE0_0000,
            0xffff_ffff,
        ] {
            let pdpte = r(PDPT_START + 8 * (addr >> 30)) & !0xfff;
            let pde = r(pdpte + 8 * ((addr >> 21) & 511));
            assert_eq!(pde & 0x83, 0x83, "{addr:#x} must be a present 2 MiB page");
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn long_mode_sregs() {
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s, true);
        assert_eq!(s.cr0, 0x8000_0011);
        assert_eq!(s.cr4, 0x20);
        assert_eq!(s.efer, 0x500);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!((s.gdt.base, s.gdt.limit), (GDT_START, 47));
        assert_eq!((s.idt.base, s.idt.limit), (IDT_START, 7));
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x10, 1, 0));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((seg.selector, seg.type_, seg.limit), (0x18, 3, 0xffff_ffff));
        }
        assert_eq!(s.tr.selector, BOOT_TSS);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let mut s = kvm_sregs::default();
        configure_sregs(&mut s, false);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.base, s.cs.limit),
            (0, 1, 0, 0xffff_ffff)
        );
        assert_eq!((s.tr.limit, s.tr.type_), (0x67, 0xb));
    }

    #[test]
    fn boot_regs_follow_the_protocol() {
        let r = boot_regs(&BootEntry::Linux64 {
            entry: GuestAddress(0x100200),
            boot_params: GuestAddress(0x7000),
        });
        assert_eq!(
            (r.rip, r.rsi, r.rsp, r.rflags),
            (0x100200, 0x7000, BOOT_STACK_POINTER, 2)
        );
        let r = boot_regs(&BootEntry::Pvh {
            entry: GuestAddress(0x1000000),
            start_info: GuestAddress(0x6000),
        });
        assert_eq!((r.rip, r.rbx, r.rflags), (0x1000000, 0x6000, 2));
    }

    #[test]
    fn msr_list_zeroes_syscall_state_and_enables_fast_strings() {
        let e = boot_msr_entries();
        let get = |i| e.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_STAR), Some(0));
        assert_eq!(get(MSR_IA32_SYSENTER_EIP), Some(0));
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(
            get(MSR_MTRR_DEF_TYPE),
            Some(0x806),
            "MTRRs on, write-back default"
        );
    }

    #[test]
    fn lvt_delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(
            with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(with_delivery_mode(0x0001_0700, APIC_MODE_NMI), 0x0001_0400);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set_lapic_reg(&mut regs, APIC_LVT_LINT1, 0xdead_beef);
        assert_eq!(lapic_reg(&regs, APIC_LVT_LINT1), 0xdead_beef);
    }
}
