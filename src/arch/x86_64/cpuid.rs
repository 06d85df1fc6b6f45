// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Per-vCPU CPUID: what KVM supports, with this vCPU's APIC id and a topology
//! that matches the vCPU count.
//!
//! The topology presented is one package with `num_cpus` cores of one thread
//! each; APIC id = vCPU index. Leaves 1, 4, 0xB/0x1F and (on AMD) 0x80000001,
//! 0x80000008, 0x8000001D and 0x8000001E are made to agree with that; the
//! hypervisor bit is set and the KVM signature leaf is guaranteed present.

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;

use super::layout::sane_phys_bits;

/// Why CPUID could not be set. The text is what a user reads.
#[derive(Debug, Error)]
pub enum CpuidError {
    #[error("cannot read the CPUID leaves KVM supports: {0}; is /dev/kvm usable?")]
    Supported(kvm_ioctls::Error),
    #[error("KVM refused the vCPU's CPUID: {0}")]
    Set(kvm_ioctls::Error),
    #[error("the vCPU's CPUID has too many entries for KVM: {0}")]
    TooMany(vmm_sys_util::fam::Error),
    #[error("vCPU index {index} is out of range for {num_cpus} vCPUs")]
    BadIndex { index: u8, num_cpus: u8 },
}

const LEAF_VENDOR: u32 = 0;
const LEAF_FEATURES: u32 = 1;
const LEAF_CACHE: u32 = 4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_ADDRESS_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_CACHE: u32 = 0x8000_001d;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Topology level types for leaves 0xB and 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// What KVM supports (KVM_GET_SUPPORTED_CPUID). Fetch it once per VM: the
/// ioctl takes ~0.3 ms, a visible part of a 5 ms boot.
pub fn supported(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuidError::Supported)?;
    Ok(cpuid.as_slice().to_vec())
}

/// Adapts KVM's `supported` CPUID to vCPU `cpu_index` of `num_cpus` and sets
/// it on `vcpu`.
pub fn setup_cpuid(
    supported: &[kvm_cpuid_entry2],
    vcpu: &VcpuFd,
    cpu_index: u8,
    num_cpus: u8,
) -> Result<(), CpuidError> {
    if num_cpus == 0 || cpu_index >= num_cpus {
        return Err(CpuidError::BadIndex {
            index: cpu_index,
            num_cpus,
        });
    }
    let mut entries = supported.to_vec();
    patch_cpuid(&mut entries, cpu_index, num_cpus);
    let cpuid = CpuId::from_entries(&entries).map_err(CpuidError::TooMany)?;
    vcpu.set_cpuid2(&cpuid).map_err(CpuidError::Set)
}

/// The guest physical address width from CPUID leaf 0x80000008 (AMD's
/// "guest physical address size" when set), or the safe default.
pub fn phys_bits(entries: &[kvm_cpuid_entry2]) -> u8 {
    let bits = find(entries, LEAF_ADDRESS_SIZES, 0)
        .map(|e| {
            let guest = (e.eax >> 16) & 0xff;
            if guest != 0 {
                guest
            } else {
                e.eax & 0xff
            }
        })
        .unwrap_or(0);
    sane_phys_bits(bits as u8)
}

fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    entries
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    find(entries, LEAF_VENDOR, 0).is_some_and(|e| {
        let vendor = [e.ebx, e.edx, e.ecx];
        vendor == [0x6874_7541, 0x6974_6e65, 0x444d_4163] // "AuthenticAMD"
            || vendor == [0x6f67_7948, 0x6e65_476e, 0x656e_6975] // "HygonGenuine"
    })
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Applies the per-vCPU changes to a copy of KVM's supported CPUID.
pub fn patch_cpuid(entries: &mut Vec<kvm_cpuid_entry2>, cpu_index: u8, num_cpus: u8) {
    let apic_id = u32::from(cpu_index);
    let n = u32::from(num_cpus.max(1));
    let amd = is_amd(entries);
    let max_basic = find(entries, LEAF_VENDOR, 0).map_or(0, |e| e.eax);
    let has_v2_topology = entries.iter().any(|e| e.function == LEAF_TOPOLOGY_V2);

    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | ((n & 0xff) << 16) | (apic_id << 24);
                e.ecx |= ECX_HYPERVISOR;
                if n > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE | LEAF_AMD_CACHE => {
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { n } else { 1 };
                e.eax = (e.eax & 0x3fff) | (((sharing - 1) & 0xfff) << 14);
                if e.function == LEAF_CACHE {
                    e.eax = (e.eax & 0x03ff_ffff) | (((n - 1) & 0x3f) << 26);
                }
            }
            LEAF_EXT_FEATURES if amd => {
                if n > 1 {
                    e.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    e.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_ADDRESS_SIZES if amd => {
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(n) << 12) | ((n - 1) & 0xff);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = apic_id;
                e.ebx = apic_id & 0xff; // core id; one thread per core
                e.ecx = 0; // node 0, one node
            }
            _ => {}
        }
    }

    entries.retain(|e| e.function != LEAF_TOPOLOGY && e.function != LEAF_TOPOLOGY_V2);
    if max_basic >= LEAF_TOPOLOGY {
        entries.extend(topology_leaf(LEAF_TOPOLOGY, apic_id, n));
    }
    if has_v2_topology && max_basic >= LEAF_TOPOLOGY_V2 {
        entries.extend(topology_leaf(LEAF_TOPOLOGY_V2, apic_id, n));
    }

    if find(entries, LEAF_KVM_SIGNATURE, 0).is_none() {
        entries.push(kvm_cpuid_entry2 {
            function: LEAF_KVM_SIGNATURE,
            eax: LEAF_KVM_FEATURES,
            ebx: KVM_SIGNATURE[0],
            ecx: KVM_SIGNATURE[1],
            edx: KVM_SIGNATURE[2],
            ..Default::default()
        });
    }
}

/// Extended topology: an SMT level of one thread, a core level of `n` cores,
/// then the terminating invalid level. EDX is the x2APIC id on every subleaf.
fn topology_leaf(function: u32, apic_id: u32, n: u32) -> [kvm_cpuid_entry2; 3] {
    let sub = |index: u32, eax: u32, ebx: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level_type << 8) | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        sub(0, 0, 1, LEVEL_SMT),
        sub(1, id_bits(n), n, LEVEL_CORE),
        sub(2, 0, 0, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        }
    }

    fn intel_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, 0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69), // GenuineIntel
            leaf(1, 0, 0x906ea, 0x0010_0800, 0x7ffa_fbff, 0x1f8b_fbff),
            // L1d (level 1) and L3 (level 3) cache descriptors.
            leaf(4, 0, 0x0000_0121, 0x01c0_003f, 0x3f, 0),
            leaf(4, 1, 0x0000_0163, 0x03c0_003f, 0x2fff, 6),
            leaf(0xb, 0, 1, 2, 0x100, 9),
            leaf(0xb, 1, 4, 8, 0x201, 9),
            leaf(0x8000_0008, 0, 0x3027, 0, 0, 0),
        ]
    }

    fn amd_like() -> Vec<kvm_cpuid_entry2> {
        vec![
            leaf(0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65), // AuthenticAMD
            leaf(1, 0, 0xa00f11, 0x0080_0800, 0x7ed8_320b, 0x178b_fbff),
            leaf(
                0x4000_0000,
                0,
                0x4000_0001,
                KVM_SIGNATURE[0],
                KVM_SIGNATURE[1],
                KVM_SIGNATURE[2],
            ),
            leaf(0x8000_0001, 0, 0, 0, 0, 0),
            leaf(0x8000_0008, 0, 0x0030_3030, 0, 0x7007, 0),
            leaf(0x8000_001d, 3, 0x0000_4163, 0x03c0_003f, 0x7fff, 1),
            leaf(0x8000_001e, 0, 7, 0x100, 0x300, 0),
        ]
    }

    fn get(e: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *find(e, f, i).unwrap_or_else(|| panic!("leaf {f:#x}.{i} missing"))
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = intel_like();
        patch_cpuid(&mut e, 3, 4);
        let l1 = get(&e, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size must be kept");
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut e = intel_like();
        patch_cpuid(&mut e, 0, 1);
        assert_eq!(get(&e, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_describes_one_thread_per_core_and_n_cores() {
        let mut e = intel_like();
        patch_cpuid(&mut e, 5, 6);
        let smt = get(&e, 0xb, 0);
        let core = get(&e, 0xb, 1);
        let end = get(&e, 0xb, 2);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!((end.ebx, (end.ecx >> 8) & 0xff, end.edx), (0, 0, 5));
        assert_eq!(e.iter().filter(|x| x.function == 0xb).count(), 3);
        assert!(e
            .iter()
            .filter(|x| x.function == 0xb)
            .all(|x| x.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX));
    }

    #[test]
    fn leaf4_core_and_sharing_counts_match() {
        let mut e = intel_like();
        patch_cpuid(&mut e, 0, 4);
        let l1d = get(&e, 4, 0);
        let l3 = get(&e, 4, 1);
        assert_eq!(l1d.eax >> 26, 3, "cores per package - 1");
        assert_eq!((l1d.eax >> 14) & 0xfff, 0, "L1 is private");
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 is shared by all");
        assert_eq!(l3.eax & 0x3fff, 0x163, "cache type and level kept");
    }

    #[test]
    fn kvm_signature_is_added_when_missing() {
        let mut e = intel_like();
        patch_cpuid(&mut e, 0, 1);
        let sig = get(&e, 0x4000_0000, 0);
        assert_eq!([sig.ebx, sig.ecx, sig.edx], KVM_SIGNATURE);
        let bytes: Vec<u8> = KVM_SIGNATURE.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&bytes[..9], b"KVMKVMKVM");
    }

    #[test]
    fn kvm_signature_is_not_duplicated() {
        let mut e = amd_like();
        patch_cpuid(&mut e, 0, 1);
        assert_eq!(e.iter().filter(|x| x.function == 0x4000_0000).count(), 1);
    }

    #[test]
    fn amd_core_count_and_topology() {
        let mut e = amd_like();
        patch_cpuid(&mut e, 2, 3);
        let sizes = get(&e, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 2, "NC = cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 2, "APIC id bits for 3 cores");
        assert_ne!(get(&e, 0x8000_0001, 0).ecx & AMD_ECX_CMP_LEGACY, 0);
        let topo = get(&e, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (2, 2, 0));
        assert_eq!((get(&e, 0x8000_001d, 3).eax >> 14) & 0xfff, 2);
        // AMD max basic leaf 0x10 ≥ 0xB: leaf 0xB is provided too.
        assert_eq!(get(&e, 0xb, 1).ebx, 3);
    }

    #[test]
    fn phys_bits_prefers_guest_size_and_falls_back() {
        assert_eq!(phys_bits(&intel_like()), 39);
        assert_eq!(phys_bits(&amd_like()), 48);
        assert_eq!(phys_bits(&[]), 36);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)],
            [0, 1, 2, 2, 3]
        );
    }
}
