// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests on a real KVM: vCPU state after setup as KVM reports it, and tiny
//! guests that run in the boot mode we set up and report what they see
//! through `out` (HLT does not exit to userspace with an in-kernel irqchip).
//!
//! They need /dev/kvm and fail loudly without it; set IVVMM_SKIP_KVM_TESTS=1
//! to skip them (each skip is printed).

use kvm_bindings::{
    kvm_mp_state, kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MP_STATE_RUNNABLE,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::boot::BootEntry;
use super::cpuid::setup_cpuid;
use super::layout::{
    ram_regions, BOOT_STACK_POINTER, GIB, MIB, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::regs::{boot_msr_entries, setup_boot_cpu, setup_fpu, setup_lapic, setup_msrs};

const REPORT_PORT: u16 = 0x1234;
const CODE_ADDR: u64 = 0x10_0000;

struct TestVm {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
}

/// Opens KVM, or says loudly why not. `None` only when skipping was asked for.
fn test_vm(mem_size: u64) -> Option<TestVm> {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            if std::env::var_os("IVVMM_SKIP_KVM_TESTS").is_some() {
                eprintln!(
                    "SKIPPED: this test needs /dev/kvm ({e}) and IVVMM_SKIP_KVM_TESTS is set"
                );
                return None;
            }
            panic!("this test needs /dev/kvm, which cannot be opened: {e}; run as a user with access to /dev/kvm or set IVVMM_SKIP_KVM_TESTS=1");
        }
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let mem = GuestMemoryMmap::from_ranges(&ram_regions(mem_size)).expect("guest memory");
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // returned TestVm keeps alive at least as long as the VM fd.
        unsafe { vm.set_user_memory_region(r) }.expect("KVM_SET_USER_MEMORY_REGION");
    }
    Some(TestVm { kvm, vm, mem })
}

fn vcpu(t: &TestVm, index: u8, num_cpus: u8) -> VcpuFd {
    let vcpu = t.vm.create_vcpu(u64::from(index)).expect("KVM_CREATE_VCPU");
    let supported = super::cpuid::supported(&t.kvm).expect("supported cpuid");
    setup_cpuid(&supported, &vcpu, index, num_cpus).expect("setup_cpuid");
    setup_msrs(&vcpu).expect("setup_msrs");
    setup_fpu(&vcpu).expect("setup_fpu");
    setup_lapic(&vcpu).expect("setup_lapic");
    vcpu
}

/// Runs until `n` 32-bit writes to REPORT_PORT were seen, returning them.
fn run_reports(vcpu: &mut VcpuFd, n: usize) -> Vec<u32> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(REPORT_PORT, data) => {
                let mut w = [0u8; 4];
                w[..data.len().min(4)].copy_from_slice(&data[..data.len().min(4)]);
                seen.push(u32::from_le_bytes(w));
                if seen.len() == n {
                    return seen;
                }
            }
            other => panic!("unexpected exit {other:?} after reports {seen:#x?}"),
        }
    }
    panic!("guest made only {} reports", seen.len());
}

#[test]
fn boot_cpu_state_reads_back_from_kvm() {
    let Some(t) = test_vm(256 * MIB) else { return };
    let vcpu = vcpu(&t, 0, 2);
    let entry = BootEntry::Linux64 {
        entry: GuestAddress(0x100_0000),
        boot_params: GuestAddress(ZERO_PAGE_START),
    };
    setup_boot_cpu(&vcpu, &t.mem, &entry).unwrap();

    let s = vcpu.get_sregs().unwrap();
    assert_eq!(s.cr0 & 0x8000_0001, 0x8000_0001, "PE and PG");
    assert_ne!(s.cr4 & 0x20, 0, "PAE");
    assert_eq!(s.efer & 0x500, 0x500, "LME and LMA");
    assert_eq!(s.cr3, PML4_START);
    assert_eq!((s.cs.selector, s.cs.l), (0x10, 1));
    assert_eq!(s.ds.selector, 0x18);
    let r = vcpu.get_regs().unwrap();
    assert_eq!(
        (r.rip, r.rsi, r.rsp),
        (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER)
    );
    assert_eq!(r.rflags & 2, 2);

    assert_eq!(vcpu.get_fpu().unwrap().fcw, 0x37f);
    // MXCSR is read from the XSAVE area (byte 24): on this PVM host
    // KVM_GET_FPU reports 0 there although the guest state holds 0x1f80.
    assert_eq!(vcpu.get_xsave().unwrap().region[6], 0x1f80);

    let lapic = vcpu.get_lapic().unwrap();
    let reg = |o: usize| u32::from_le_bytes([0, 1, 2, 3].map(|i| lapic.regs[o + i] as u8));
    assert_eq!((reg(0x350) >> 8) & 7, 7, "LINT0 ExtINT");
    assert_eq!((reg(0x360) >> 8) & 7, 4, "LINT1 NMI");

    let wanted = boot_msr_entries();
    let query: Vec<_> = wanted
        .iter()
        .map(|m| kvm_msr_entry {
            index: m.index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&query).unwrap();
    assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), wanted.len());
    for (got, want) in msrs.as_slice().iter().zip(&wanted) {
        if want.index == 0x10 {
            continue; // the TSC has moved on since it was set
        }
        assert_eq!(got.data, want.data, "MSR {:#x}", want.index);
    }

    let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
    let l1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
    assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
    assert!(cpuid.as_slice().iter().any(|e| e.function == 0x4000_0000));
}

#[test]
fn long_mode_guest_runs_through_the_identity_page_tables() {
    // 3 GiB of RAM (sparse) so the probe can read near the top of low RAM.
    let Some(t) = test_vm(3 * GIB) else { return };
    let probe = 3 * GIB - 2 * MIB + 0x40; // in the last 2 MiB page of PD 2
    t.mem
        .write_obj(0xfeed_f00d_u32, GuestAddress(probe))
        .unwrap();
    #[rustfmt::skip]
    let code: Vec<u8> = [
        &[0xb8][..], &(probe as u32).to_le_bytes(),             // mov eax, probe
        &[0x8b, 0x00],                                          // mov eax, [rax]
        &[0x66, 0xba], &REPORT_PORT.to_le_bytes(),              // mov dx, REPORT_PORT
        &[0xef],                                                // out dx, eax
        &[0x89, 0xf0, 0xef],                                    // mov eax, esi; out
        &[0x50, 0x5b],                                          // push rax; pop rbx
        &[0x89, 0xe0, 0xef],                                    // mov eax, esp; out
        &[0xb8], &0xfee0_0030u32.to_le_bytes(),                 // mov eax, LAPIC version reg
        &[0x8b, 0x00],                                          // mov eax, [rax]
        &[0xef],                                                // out
        &[0xeb, 0xfe],                                          // jmp $
    ].concat();
    t.mem.write_slice(&code, GuestAddress(CODE_ADDR)).unwrap();
    let mut vcpu = vcpu(&t, 0, 1);
    let entry = BootEntry::Linux64 {
        entry: GuestAddress(CODE_ADDR),
        boot_params: GuestAddress(ZERO_PAGE_START),
    };
    setup_boot_cpu(&vcpu, &t.mem, &entry).unwrap();
    let seen = run_reports(&mut vcpu, 4);
    assert_eq!(
        seen[0], 0xfeed_f00d,
        "read through PD 2 of the identity map"
    );
    assert_eq!(u64::from(seen[1]), ZERO_PAGE_START, "RSI = boot_params");
    assert_eq!(
        u64::from(seen[2]),
        BOOT_STACK_POINTER,
        "stack usable and balanced"
    );
    assert_eq!(
        seen[3] & 0xff,
        0x14,
        "LAPIC version through PD 3 of the identity map"
    );
}

#[test]
fn pvh_guest_starts_in_flat_32_bit_protected_mode() {
    let Some(t) = test_vm(64 * MIB) else { return };
    let probe = 0x3f0_0000u32;
    t.mem
        .write_obj(0x1234_5678_u32, GuestAddress(u64::from(probe)))
        .unwrap();
    #[rustfmt::skip]
    let code: Vec<u8> = [
        &[0x89, 0xd8][..],                          // mov eax, ebx
        &[0x66, 0xba], &REPORT_PORT.to_le_bytes(),  // mov dx, REPORT_PORT
        &[0xef],                                    // out dx, eax
        &[0x8b, 0x05], &probe.to_le_bytes(),        // mov eax, [probe]
        &[0xef],                                    // out
        &[0x0f, 0x20, 0xc0, 0xef],                  // mov eax, cr0; out
        &[0xeb, 0xfe],                              // jmp $
    ].concat();
    t.mem.write_slice(&code, GuestAddress(CODE_ADDR)).unwrap();
    let mut vcpu = vcpu(&t, 0, 1);
    let entry = BootEntry::Pvh {
        entry: GuestAddress(CODE_ADDR),
        start_info: GuestAddress(PVH_INFO_START),
    };
    setup_boot_cpu(&vcpu, &t.mem, &entry).unwrap();
    let seen = run_reports(&mut vcpu, 3);
    assert_eq!(u64::from(seen[0]), PVH_INFO_START, "EBX = start_info");
    assert_eq!(seen[1], 0x1234_5678);
    assert_eq!(seen[2] & 0x8000_0001, 1, "protected mode, paging off");
}

#[test]
fn guest_cpuid_shows_its_apic_id_and_the_vcpu_count() {
    let Some(t) = test_vm(64 * MIB) else { return };
    #[rustfmt::skip]
    let code: Vec<u8> = [
        // CPUID overwrites EDX, so the port is reloaded after each one.
        &[0xb8, 1, 0, 0, 0, 0x0f, 0xa2][..],                   // eax=1; cpuid
        &[0x66, 0xba], &REPORT_PORT.to_le_bytes(),             // mov dx, REPORT_PORT
        &[0x89, 0xd8, 0xef],                                   // out ebx
        &[0xb8, 0xb, 0, 0, 0, 0xb9, 1, 0, 0, 0, 0x0f, 0xa2],   // eax=0xb, ecx=1; cpuid
        &[0x89, 0xd6],                                         // mov esi, edx
        &[0x66, 0xba], &REPORT_PORT.to_le_bytes(),
        &[0x89, 0xd8, 0xef, 0x89, 0xf0, 0xef],                 // out ebx; out esi
        &[0xb8, 0, 0, 0, 0x40, 0x0f, 0xa2],                    // eax=0x40000000; cpuid
        &[0x66, 0xba], &REPORT_PORT.to_le_bytes(),
        &[0x89, 0xd8, 0xef],                                   // out ebx
        &[0xeb, 0xfe],
    ].concat();
    t.mem.write_slice(&code, GuestAddress(CODE_ADDR)).unwrap();
    let mut vcpu = vcpu(&t, 2, 3);
    // vCPU 2 is an AP: KVM holds it until INIT/SIPI. Let it run directly.
    let runnable = kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    };
    vcpu.set_mp_state(runnable).expect("KVM_SET_MP_STATE");
    let entry = BootEntry::Linux64 {
        entry: GuestAddress(CODE_ADDR),
        boot_params: GuestAddress(ZERO_PAGE_START),
    };
    setup_boot_cpu(&vcpu, &t.mem, &entry).unwrap();
    let seen = run_reports(&mut vcpu, 4);
    assert_eq!(seen[0] >> 24, 2, "leaf 1 APIC id");
    assert_eq!((seen[0] >> 16) & 0xff, 3, "leaf 1 logical processor count");
    assert_eq!(seen[1], 3, "leaf 0xB core level: 3 vCPUs");
    assert_eq!(seen[2], 2, "leaf 0xB x2APIC id");
    assert_eq!(&seen[3].to_le_bytes(), b"KVMK");
}
