// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests for `acpi`: the tables are written to guest memory and parsed back
//! from there the way an OS finds them, from the RSDP on.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::arch::x86_64::layout::{MIB, MMIO32_END, MMIO32_START};
use crate::arch::x86_64::mptable::{build_mptable, MAX_CPUS};
use crate::devices::acpi_pm::{SLP_EN, SLP_TYP_SHIFT};

const MEM: u64 = 256 * MIB;
const PHYS_BITS: u8 = 40;

fn guest() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Reads a whole table at `addr` (its length from the header), checking the
/// signature and the checksum.
fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
    let head = read(mem, addr, 36);
    assert_eq!(
        &head[0..4],
        sig,
        "signature at {addr:#x}: {:?}",
        String::from_utf8_lossy(&head[0..4])
    );
    let len = u32_at(&head, 4) as usize;
    assert!(len >= 36, "{sig:?} length {len}");
    let t = read(mem, addr, len);
    assert_eq!(sum(&t), 0, "{sig:?} checksum");
    assert_eq!(&t[10..16], &OEM_ID);
    t
}

/// Everything an OS reads, found from the RSDP.
struct Found {
    xsdt_entries: Vec<u64>,
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
}

fn find(mem: &GuestMemoryMmap) -> Found {
    let rsdp = read(mem, ACPI_RSDP_START, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[0..20]), 0, "RSDP checksum (first 20 bytes)");
    assert_eq!(rsdp[15], 2, "revision 2: XSDT present");
    assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
    assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");
    let xsdt_addr = u64_at(&rsdp, 24);
    assert!((ACPI_TABLES_START..ACPI_TABLES_LIMIT).contains(&xsdt_addr));
    let xsdt = table(mem, xsdt_addr, b"XSDT");
    assert_eq!((xsdt.len() - 36) % 8, 0);
    let xsdt_entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    let by_sig = |sig: &[u8; 4]| {
        let hits: Vec<u64> = xsdt_entries
            .iter()
            .copied()
            .filter(|&a| &read(mem, a, 4)[..] == sig)
            .collect();
        assert_eq!(hits.len(), 1, "{sig:?} in the XSDT: {hits:x?}");
        table(mem, hits[0], sig)
    };
    let fadt = by_sig(b"FACP");
    let madt = by_sig(b"APIC");
    let x_dsdt = u64_at(&fadt, 140);
    assert_ne!(x_dsdt, 0, "FADT X_DSDT");
    let dsdt = table(mem, x_dsdt, b"DSDT");
    for &a in &xsdt_entries {
        assert!(
            (ACPI_TABLES_START..ACPI_TABLES_LIMIT).contains(&a),
            "{a:#x}"
        );
    }
    Found {
        xsdt_entries,
        fadt,
        madt,
        dsdt,
    }
}

fn setup(num_cpus: u8, mem_size: u64, phys_bits: u8) -> (GuestMemoryMmap, Found) {
    let mem = guest();
    setup_acpi(&mem, num_cpus, mem_size, phys_bits).unwrap();
    let found = find(&mem);
    (mem, found)
}

/// MADT structures as (type, bytes).
fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut o = 44;
    while o < madt.len() {
        let (ty, len) = (madt[o], madt[o + 1] as usize);
        assert!(len >= 2 && o + len <= madt.len(), "MADT entry at {o}");
        out.push((ty, &madt[o..o + len]));
        o += len;
    }
    out
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn rsdp_xsdt_and_every_table_check_out() {
    let (_, f) = setup(2, MEM, PHYS_BITS);
    assert_eq!(f.xsdt_entries.len(), 2, "FADT and MADT");
    assert_eq!(f.fadt.len(), 276, "FADT of ACPI 6.5");
    assert_eq!(f.fadt[8], 6, "FADT major version");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers_in_port_io() {
    let (_, f) = setup(1, MEM, PHYS_BITS);
    let flags = u32_at(&f.fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    // A generic address: space 1 (I/O), 8 bits wide, offset 0, byte access.
    let gas = |o: usize| {
        (
            f.fadt[o],
            f.fadt[o + 1],
            f.fadt[o + 2],
            f.fadt[o + 3],
            u64_at(&f.fadt, o + 4),
        )
    };
    assert_eq!(gas(116), (1, 8, 0, 1, 0x602), "RESET_REG");
    assert_eq!(f.fadt[128], RESET_VALUE, "RESET_VALUE");
    assert_eq!(gas(244), (1, 8, 0, 1, 0x600), "SLEEP_CONTROL_REG");
    assert_eq!(gas(256), (1, 8, 0, 1, 0x601), "SLEEP_STATUS_REG");
    assert_eq!(
        (gas(244).4, gas(256).4, gas(116).4),
        (
            u64::from(ACPI_SLEEP_CONTROL_PORT),
            u64::from(ACPI_SLEEP_STATUS_PORT),
            u64::from(ACPI_RESET_PORT)
        )
    );
    // No PM1 blocks or PM timer on a hardware-reduced platform.
    for o in [56, 60, 64, 68, 72, 76] {
        assert_eq!(u32_at(&f.fadt, o), 0, "legacy block at {o}");
    }
    // The SCI number must not be an ISA IRQ (Linux would re-route it).
    assert!(u16_at(&f.fadt, 46) >= 16);
    // No CMOS RTC, no VGA.
    assert_eq!(
        u16_at(&f.fadt, 109) & ((1 << 5) | (1 << 2)),
        (1 << 5) | (1 << 2)
    );
}

#[test]
fn madt_has_a_local_apic_per_vcpu_the_ioapic_and_the_mp_table_routing() {
    for n in [1u8, 2, 7, 64, MAX_CPUS] {
        let (_, f) = setup(n, MEM, PHYS_BITS);
        assert_eq!(u32_at(&f.madt, 36) as u64, LAPIC_START);
        let e = madt_entries(&f.madt);
        let lapics: Vec<_> = e.iter().filter(|(t, _)| *t == 0).collect();
        assert_eq!(lapics.len(), usize::from(n), "{n} cpus");
        for (i, (_, l)) in lapics.iter().enumerate() {
            assert_eq!(l.len(), 8);
            assert_eq!(
                (usize::from(l[2]), usize::from(l[3])),
                (i, i),
                "uid, apic id"
            );
            assert_eq!(u32_at(l, 4) & 1, 1, "enabled");
        }
        let ioapics: Vec<_> = e.iter().filter(|(t, _)| *t == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let io = ioapics[0].1;
        assert_eq!(io[2], n, "IOAPIC id follows the CPUs, as in the MP table");
        assert_eq!(u32_at(io, 4) as u64, IOAPIC_START);
        assert_eq!(u32_at(io, 8), 0, "GSI base");

        // The MP table's ISA routing, parsed from its bytes: (irq, pin, flags).
        let mp = build_mptable(n).unwrap();
        let cfg = &mp[16..];
        let mut off = 44;
        let mut mp_routes = Vec::new();
        while off < cfg.len() {
            let len = if cfg[off] == 0 { 20 } else { 8 };
            if cfg[off] == 3 {
                let x = &cfg[off..off + 8];
                assert_eq!(x[6], n, "MP entry targets the IOAPIC");
                mp_routes.push((x[5], u32::from(x[7]), u16_at(x, 2)));
            }
            off += len;
        }
        assert_eq!(mp_routes.len(), 16);
        let overrides: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == 2)
            .map(|(_, x)| {
                assert_eq!(x.len(), 10);
                assert_eq!(x[2], 0, "bus ISA");
                (x[3], u32_at(x, 4), u16_at(x, 8))
            })
            .collect();
        assert_eq!(overrides, mp_routes, "{n} cpus");

        let nmis: Vec<_> = e.iter().filter(|(t, _)| *t == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!((nmis[0].1[2], nmis[0].1[5]), (0xff, 1), "all CPUs, LINT1");
        assert_eq!(e.len(), usize::from(n) + 1 + 16 + 1, "nothing else");
    }
}

#[test]
fn dsdt_describes_the_host_bridge_with_the_layout_windows_com1_and_s5() {
    let (_, f) = setup(1, MEM, PHYS_BITS);
    let d = &f.dsdt;
    assert_eq!(d[8], 2, "DSDT revision 2: 64-bit integers");
    // Device(PCI0) with _HID EISAID("PNP0A03") = DWordConst 0x030ad041, and
    // Device(COM1) with PNP0501 = 0x0105d041.
    assert_eq!(find_bytes(d, b"PCI0").len(), 1);
    assert_eq!(
        find_bytes(d, b"_HID\x0c\x41\xd0\x0a\x03").len(),
        1,
        "PNP0A03"
    );
    assert_eq!(
        find_bytes(d, b"_HID\x0c\x41\xd0\x05\x01").len(),
        1,
        "PNP0501"
    );
    assert_eq!(find_bytes(d, b"\x5b\x82").len(), 2, "two devices");

    // WordBusNumber: bus 0 only.
    let bus = find_bytes(d, &[0x88, 0x0d, 0x00, 0x02]);
    assert_eq!(bus.len(), 1);
    let b = &d[bus[0]..bus[0] + 16];
    assert_eq!((u16_at(b, 8), u16_at(b, 10), u16_at(b, 14)), (0, 0, 1));
    // IO(Decode16, 0xcf8, 0xcf8, 1, 8) and COM1's IO(0x3f8, 8).
    assert_eq!(
        find_bytes(d, &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]).len(),
        1
    );
    assert_eq!(
        find_bytes(d, &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]).len(),
        1
    );
    // Extended IRQ: consumer, edge, active high, exclusive, IRQ 4.
    assert_eq!(
        find_bytes(d, &[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]).len(),
        1
    );

    // DWordMemory: the 32-bit window of `layout`.
    let dw = find_bytes(d, &[0x87, 0x17, 0x00, 0x00]);
    assert_eq!(dw.len(), 1);
    let w = &d[dw[0]..dw[0] + 26];
    let (min, max, len) = (u32_at(w, 10), u32_at(w, 14), u32_at(w, 22));
    assert_eq!(u64::from(min), MMIO32_START);
    assert_eq!(u64::from(max) + 1, MMIO32_END);
    assert_eq!(u64::from(len), MMIO32_END - MMIO32_START);
    // QWordMemory: the 64-bit window of `layout` for this VM.
    let want = mmio64_window(MEM, PHYS_BITS);
    let qw = find_bytes(d, &[0x8a, 0x2b, 0x00, 0x00]);
    assert_eq!(qw.len(), 1);
    let q = &d[qw[0]..qw[0] + 46];
    assert_eq!(u64_at(q, 14), want.start);
    assert_eq!(u64_at(q, 22) + 1, want.end);
    assert_eq!(u64_at(q, 38), want.end - want.start);
    assert_eq!(want, 4 << 30..1 << 40, "sanity of the expectation");

    // Name(_S5_, Package(4) {5, 0, 0, 0}): what a guest writes as SLP_TYP.
    let s5 = find_bytes(d, b"_S5_");
    assert_eq!(s5.len(), 1);
    let p = &d[s5[0] + 4..];
    assert_eq!(p[0], 0x12, "PackageOp");
    assert_eq!(p[2], 4, "four elements");
    assert_eq!((p[3], p[4]), (0x0a, SLP_TYP_S5), "BytePrefix 5");
    assert_eq!(((SLP_TYP_S5 << SLP_TYP_SHIFT) | SLP_EN), 0x34);
}

#[test]
fn dsdt_windows_follow_memory_size_and_phys_bits() {
    // 6 GiB: RAM to 7 GiB, the 64-bit window starts at 7 GiB.
    let (_, f) = setup(1, 6 << 30, 39);
    let qw = find_bytes(&f.dsdt, &[0x8a, 0x2b, 0x00, 0x00]);
    let q = &f.dsdt[qw[0]..qw[0] + 46];
    assert_eq!((u64_at(q, 14), u64_at(q, 22)), (7 << 30, (1 << 39) - 1));
    // RAM reaching the address limit: no 64-bit window is offered.
    let (_, f) = setup(1, 70 << 30, 36);
    assert!(find_bytes(&f.dsdt, &[0x8a, 0x2b, 0x00, 0x00]).is_empty());
    assert_eq!(find_bytes(&f.dsdt, &[0x87, 0x17, 0x00, 0x00]).len(), 1);
}

#[test]
fn tables_do_not_overlap_and_fit_for_the_most_cpus() {
    let t = build_acpi_tables(MAX_CPUS, MEM, PHYS_BITS).unwrap();
    let l = t.layout;
    assert_eq!(l.rsdp, ACPI_RSDP_START);
    let mut addrs = [l.xsdt, l.fadt, l.madt, l.dsdt];
    addrs.sort();
    assert!(addrs[0] >= ACPI_TABLES_START);
    assert!(ACPI_RSDP_START + t.image.len() as u64 <= ACPI_TABLES_LIMIT);
    for a in addrs {
        assert_eq!(a % 16, 0);
    }
    let mem = guest();
    setup_acpi(&mem, MAX_CPUS, MEM, PHYS_BITS).unwrap();
    let f = find(&mem);
    // Each table ends before the next begins.
    let lens = |a: u64| u32_at(&read(&mem, a, 8), 4) as u64;
    for w in addrs.windows(2) {
        assert!(w[0] + lens(w[0]) <= w[1], "{w:x?}");
    }
    assert_eq!(madt_entries(&f.madt).len(), usize::from(MAX_CPUS) + 18);
}

#[test]
fn too_little_guest_memory_is_an_error_not_a_panic() {
    let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    assert_eq!(
        setup_acpi(&small, 1, MEM, PHYS_BITS),
        Err(AcpiError::GuestMemory)
    );
}

/// An AML PkgLength at `b[o..]`: (value, bytes it takes).
fn pkg_length(b: &[u8], o: usize) -> (usize, usize) {
    let lead = b[o];
    let extra = usize::from(lead >> 6);
    if extra == 0 {
        return (usize::from(lead & 0x3f), 1);
    }
    let mut v = usize::from(lead & 0x0f);
    for i in 0..extra {
        v |= usize::from(b[o + 1 + i]) << (4 + 8 * i);
    }
    (v, 1 + extra)
}

#[test]
fn dsdt_aml_nests_as_declared() {
    let (_, f) = setup(2, MEM, PHYS_BITS);
    let aml = &f.dsdt[36..];
    // Scope(\_SB) { Device(PCI0) {...} Device(COM1) {...} } Name(_S5_, ...)
    assert_eq!(aml[0], 0x10, "ScopeOp");
    let (scope_len, _) = pkg_length(aml, 1);
    let scope_end = 1 + scope_len;
    assert_eq!(
        &aml[scope_end..scope_end + 5],
        b"\x08_S5_",
        "_S5 follows the scope"
    );
    let (pkg_len, _) = pkg_length(aml, scope_end + 6);
    assert_eq!(
        scope_end + 6 + pkg_len,
        aml.len(),
        "_S5 package ends the table"
    );
    // The two devices fill the scope exactly.
    let (_, n) = pkg_length(aml, 1);
    let mut o = 1 + n + 5; // PkgLength, then "\\_SB_" (root prefix + 4)
    assert_eq!(&aml[1 + n..o], b"\\_SB_");
    for name in [b"PCI0", b"COM1"] {
        assert_eq!(&aml[o..o + 2], &[0x5b, 0x82], "DeviceOp");
        let (len, _) = pkg_length(aml, o + 2);
        let (_, m) = pkg_length(aml, o + 2);
        assert_eq!(&aml[o + 2 + m..o + 6 + m], name);
        o += 2 + len;
    }
    assert_eq!(o, scope_end);
}
