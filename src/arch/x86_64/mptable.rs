// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Intel MultiProcessor table: CPUs, the IOAPIC and the ISA interrupts.
//!
//! Written per the MP specification 1.4: a floating pointer structure ("_MP_")
//! at [`MPTABLE_START`] (the EBDA, where Linux scans), followed directly by
//! the configuration table ("PCMP") with one processor entry per vCPU, a PCI
//! and an ISA bus, the IOAPIC, ISA IRQs 0..15 routed to IOAPIC pins 0..15 and
//! the two local interrupts (ExtINT on LINT0, NMI on LINT1). The table is
//! built as plain bytes and written in one go, so no packed structs are needed.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_START, LAPIC_START, MPTABLE_LIMIT, MPTABLE_START};

/// The most vCPUs an MP table can describe: APIC ids 0..=253, the IOAPIC
/// takes the next id and 0xff is the broadcast id.
pub const MAX_CPUS: u8 = 254;

const FLOATING_POINTER_SIZE: usize = 16;
const CONFIG_HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;
/// ISA IRQs routed to the IOAPIC.
const ISA_IRQS: u8 = 16;

const SPEC_REV_1_4: u8 = 4;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// Local APIC version reported for every CPU (integrated APIC).
const LAPIC_VERSION: u8 = 0x14;
/// Family 6 signature and the FPU + APIC feature bits, as real firmware reports.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conforms to the bus".
const INT_FLAGS_CONFORM: u16 = 0;
const ALL_LOCAL_APICS: u8 = 0xff;
/// The local APIC input NMI is wired to on every CPU (ExtINT is on LINT0).
pub const NMI_LINT: u8 = 1;

const PCI_BUS_ID: u8 = 0;
const ISA_BUS_ID: u8 = 1;

const OEM_ID: &[u8; 8] = b"IVVMM   ";
const PRODUCT_ID: &[u8; 12] = b"IVVMM-VM    ";

/// Why the MP table could not be written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MptableError {
    #[error("cannot describe {0} vCPUs in the MP table; use between 1 and {MAX_CPUS} vCPUs")]
    CpuCount(u32),
    #[error("the MP table ({size} bytes) does not fit below {limit:#x}; use fewer vCPUs")]
    TooLarge { size: usize, limit: u64 },
    #[error("cannot write the MP table to guest memory at {MPTABLE_START:#x}; give the VM at least 1 MiB of memory")]
    GuestMemory,
}

/// The APIC id the IOAPIC gets: the one after the last vCPU's.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus
}

/// How the ISA interrupts reach the IOAPIC: (ISA IRQ, IOAPIC pin, MPS INTI
/// flags) for IRQs 0..15, identity-mapped and conforming to the bus (edge,
/// active high). The ACPI MADT repeats these as interrupt source overrides.
pub fn isa_irq_routes() -> impl Iterator<Item = (u8, u8, u16)> {
    (0..ISA_IRQS).map(|irq| (irq, irq, INT_FLAGS_CONFORM))
}

/// Size in bytes of the floating pointer plus the config table for `num_cpus`.
pub fn mptable_size(num_cpus: u8) -> usize {
    FLOATING_POINTER_SIZE + config_table_size(num_cpus)
}

fn config_table_size(num_cpus: u8) -> usize {
    CONFIG_HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * usize::from(num_cpus)
        + SMALL_ENTRY_SIZE * (2 /* buses */ + 1 /* ioapic */ + usize::from(ISA_IRQS) + 2)
}

/// Writes the MP floating pointer and configuration table for `num_cpus`
/// vCPUs (APIC ids 0..num_cpus, vCPU 0 the bootstrap processor) at
/// [`MPTABLE_START`]. The IOAPIC gets APIC id `num_cpus`.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let table = build_mptable(num_cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(|_| MptableError::GuestMemory)
}

/// Builds the whole table as it will sit in guest memory at [`MPTABLE_START`].
pub fn build_mptable(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::CpuCount(u32::from(num_cpus)));
    }
    let size = mptable_size(num_cpus);
    if MPTABLE_START + size as u64 > MPTABLE_LIMIT {
        return Err(MptableError::TooLarge {
            size,
            limit: MPTABLE_LIMIT,
        });
    }

    let config_addr = MPTABLE_START + FLOATING_POINTER_SIZE as u64;
    let mut t = Vec::with_capacity(size);
    write_floating_pointer(&mut t, config_addr as u32);
    let config_start = t.len();
    write_config_table(&mut t, num_cpus);

    let config_checksum = checksum(&t[config_start..]);
    t[config_start + 7] = config_checksum;
    debug_assert_eq!(t.len(), size);
    Ok(t)
}

/// The two's complement that makes the bytes sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

fn write_floating_pointer(t: &mut Vec<u8>, config_addr: u32) {
    let start = t.len();
    t.extend_from_slice(b"_MP_");
    t.extend_from_slice(&config_addr.to_le_bytes());
    t.push(1); // length in 16-byte paragraphs
    t.push(SPEC_REV_1_4);
    t.push(0); // checksum, patched below
               // Feature byte 1 = 0: a config table is present (no default configuration).
               // Feature byte 2 = 0: no IMCR, virtual wire mode.
    t.extend_from_slice(&[0; 5]);
    t[start + 10] = checksum(&t[start..start + FLOATING_POINTER_SIZE]);
}

fn write_config_table(t: &mut Vec<u8>, num_cpus: u8) {
    let entry_count = u16::from(num_cpus) + 2 + 1 + u16::from(ISA_IRQS) + 2;
    let length = config_table_size(num_cpus) as u16;
    t.extend_from_slice(b"PCMP");
    t.extend_from_slice(&length.to_le_bytes());
    t.push(SPEC_REV_1_4);
    t.push(0); // checksum, patched by the caller
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(PRODUCT_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes());
    t.extend_from_slice(&entry_count.to_le_bytes());
    t.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // extended table length: empty
    t.push(0); // extended table checksum
    t.push(0); // reserved

    for cpu in 0..num_cpus {
        let mut flags = CPU_ENABLED;
        if cpu == 0 {
            flags |= CPU_BOOTSTRAP;
        }
        t.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
    }

    t.extend_from_slice(&[ENTRY_BUS, PCI_BUS_ID]);
    t.extend_from_slice(b"PCI   ");
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(b"ISA   ");

    let ioapic_id = ioapic_id(num_cpus);
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED]);
    t.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());

    for (irq, pin, flags) in isa_irq_routes() {
        t.push(ENTRY_IO_INTERRUPT);
        t.push(INT_TYPE_INT);
        t.extend_from_slice(&flags.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, irq, ioapic_id, pin]);
    }

    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, NMI_LINT)] {
        t.push(ENTRY_LOCAL_INTERRUPT);
        t.push(kind);
        t.extend_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
        t.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LOCAL_APICS, lint]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{EBDA_START, VGA_HOLE_START};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read_table(mem: &GuestMemoryMmap, num_cpus: u8) -> Vec<u8> {
        let mut buf = vec![0u8; mptable_size(num_cpus)];
        mem.read_slice(&mut buf, GuestAddress(MPTABLE_START))
            .unwrap();
        buf
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
    }

    /// Config table entries as (type, bytes).
    fn entries(config: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        let mut off = CONFIG_HEADER_SIZE;
        while off < config.len() {
            let len = if config[off] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_SIZE
            } else {
                SMALL_ENTRY_SIZE
            };
            out.push(&config[off..off + len]);
            off += len;
        }
        out
    }

    #[test]
    fn floating_pointer_is_valid_and_points_at_the_config_table() {
        let m = mem();
        setup_mptable(&m, 2).unwrap();
        let t = read_table(&m, 2);
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(sum(&t[0..16]), 0);
        assert_eq!(t[8], 1);
        assert_eq!(t[9], SPEC_REV_1_4);
        assert_eq!(u32_at(&t, 4) as u64, MPTABLE_START + 16);
        assert_eq!(
            t[11], 0,
            "feature byte 1 must say a config table is present"
        );
    }

    #[test]
    fn config_table_checksum_length_and_counts() {
        for n in [1u8, 2, 7, 64, MAX_CPUS] {
            let t = build_mptable(n).unwrap();
            let config = &t[16..];
            assert_eq!(&config[0..4], b"PCMP");
            assert_eq!(usize::from(u16_at(config, 4)), config.len());
            assert_eq!(sum(config), 0, "checksum for {n} cpus");
            assert_eq!(u32_at(config, 36) as u64, LAPIC_START);
            assert_eq!(u16_at(config, 40), 0, "extended table must be empty");
            let e = entries(config);
            assert_eq!(usize::from(u16_at(config, 34)), e.len());
            let count = |ty: u8| e.iter().filter(|x| x[0] == ty).count();
            assert_eq!(count(ENTRY_PROCESSOR), usize::from(n));
            assert_eq!(count(ENTRY_BUS), 2);
            assert_eq!(count(ENTRY_IOAPIC), 1);
            assert_eq!(count(ENTRY_IO_INTERRUPT), 16);
            assert_eq!(count(ENTRY_LOCAL_INTERRUPT), 2);
        }
    }

    #[test]
    fn processors_have_index_apic_ids_and_only_cpu0_is_bsp() {
        let t = build_mptable(4).unwrap();
        let e = entries(&t[16..]);
        let cpus: Vec<_> = e.iter().filter(|x| x[0] == ENTRY_PROCESSOR).collect();
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(usize::from(c[1]), i);
            assert_ne!(c[3] & CPU_ENABLED, 0);
            assert_eq!(c[3] & CPU_BOOTSTRAP != 0, i == 0);
        }
    }

    #[test]
    fn ioapic_and_interrupt_routing() {
        let n = 3;
        let t = build_mptable(n).unwrap();
        let e = entries(&t[16..]);
        let ioapic = e.iter().find(|x| x[0] == ENTRY_IOAPIC).unwrap();
        assert_eq!(ioapic[1], n);
        assert_eq!(ioapic[2], 0x11);
        assert_eq!(ioapic[3], IOAPIC_ENABLED);
        assert_eq!(u32_at(ioapic, 4) as u64, 0xFEC0_0000);

        let isa = e
            .iter()
            .find(|x| x[0] == ENTRY_BUS && &x[2..8] == b"ISA   ")
            .unwrap();
        let ints: Vec<_> = e.iter().filter(|x| x[0] == ENTRY_IO_INTERRUPT).collect();
        for (irq, x) in ints.iter().enumerate() {
            assert_eq!(x[1], INT_TYPE_INT);
            assert_eq!(x[4], isa[1], "source bus must be the ISA bus");
            assert_eq!(usize::from(x[5]), irq);
            assert_eq!(x[6], n, "destination must be the IOAPIC");
            assert_eq!(usize::from(x[7]), irq);
        }

        let lints: Vec<_> = e.iter().filter(|x| x[0] == ENTRY_LOCAL_INTERRUPT).collect();
        assert_eq!((lints[0][1], lints[0][7]), (INT_TYPE_EXTINT, 0));
        assert_eq!((lints[1][1], lints[1][7]), (INT_TYPE_NMI, 1));
        assert!(lints.iter().all(|x| x[6] == 0xff));
    }

    #[test]
    fn floating_pointer_is_where_linux_scans() {
        // Linux scans the last KiB of base memory (639 KiB) for "_MP_".
        assert_eq!(MPTABLE_START, 639 * 1024);
        assert_eq!(MPTABLE_START, EBDA_START);
        assert_eq!(MPTABLE_START % 16, 0);
    }

    #[test]
    fn table_fits_before_0xa0000_for_typical_vm_sizes() {
        // Up to 39 vCPUs the whole table sits in the EBDA's last KiB.
        for n in 1..=39u8 {
            assert!(
                MPTABLE_START + mptable_size(n) as u64 <= VGA_HOLE_START,
                "{n}"
            );
        }
        assert!(MPTABLE_START + mptable_size(40) as u64 > VGA_HOLE_START);
    }

    #[test]
    fn largest_table_stays_in_the_reserved_hole() {
        assert!(MPTABLE_START + mptable_size(MAX_CPUS) as u64 <= MPTABLE_LIMIT);
    }

    #[test]
    fn refuses_zero_and_too_many_cpus() {
        assert_eq!(build_mptable(0), Err(MptableError::CpuCount(0)));
        assert_eq!(build_mptable(255), Err(MptableError::CpuCount(255)));
        assert!(build_mptable(MAX_CPUS).is_ok());
    }

    #[test]
    fn refuses_guest_memory_that_cannot_hold_it() {
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert_eq!(setup_mptable(&small, 1), Err(MptableError::GuestMemory));
    }
}
