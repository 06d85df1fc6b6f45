// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ACPI tables: what a modern kernel reads to find the CPUs, the interrupt
//! controllers, the PCI host bridge and its windows, COM1, and how to power
//! off and reset.
//!
//! Built with the rust-vmm `acpi_tables` crate and written at
//! [`ACPI_RSDP_START`] (the BIOS area, reserved in the e820 map):
//!
//! - RSDP (revision 2) → XSDT → FADT and MADT; the FADT points at the DSDT.
//! - FADT: hardware-reduced (no PM1 blocks, no SCI, no PM timer), with the
//!   sleep control/status registers and the reset register in port I/O (the
//!   device is `devices::acpi_pm`).
//! - MADT: one enabled local APIC per vCPU (APIC id = vCPU index), the
//!   IOAPIC, the ISA interrupt source overrides and LINT1 as NMI — the same
//!   machine the MP table (`mptable`) describes to kernels without ACPI.
//! - DSDT: `\_SB.PCI0` (PNP0A03: bus 0, config ports 0xcf8..0xcff, the 32-
//!   and 64-bit MMIO windows of `layout`), `\_SB.COM1` (PNP0501, 0x3f8,
//!   IRQ 4) and `\_S5`.
//!
//! The guest finds the RSDP through boot params (`acpi_rsdp_addr`), PVH
//! start info (`rsdp_paddr`) or by scanning 0xe0000..0xfffff.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    mmio32_window, mmio64_window, ACPI_RESET_PORT, ACPI_RSDP_START, ACPI_SLEEP_CONTROL_PORT,
    ACPI_SLEEP_STATUS_PORT, ACPI_TABLES_LIMIT, ACPI_TABLES_START, IOAPIC_START, LAPIC_START,
};
use super::mptable;
use crate::devices::acpi_pm::{RESET_VALUE, SLP_TYP_S5};
use crate::devices::pci::root::{CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN};
use crate::devices::serial::{COM1_IRQ, COM1_PORT, COM1_PORT_LEN};

/// OEM fields of every table.
pub const OEM_ID: [u8; 6] = *b"IVVMM ";
pub const OEM_TABLE_ID: [u8; 8] = *b"IVVMMVM ";
const OEM_REVISION: u32 = 1;

/// DSDT revision 2: AML integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// MADT revision of ACPI 6.5.
const MADT_REVISION: u8 = 5;
const MADT_HEADER_LEN: u32 = 44;
/// MADT flags: PCAT_COMPAT, the machine also has dual 8259s (KVM's PIC).
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_TYPE_LOCAL_APIC_NMI: u8 = 4;
const MADT_ISA_BUS: u8 = 0;
const MADT_ALL_PROCESSORS: u8 = 0xff;

/// FADT IA-PC boot architecture flags: no VGA, no CMOS RTC. The 8042 bit
/// stays clear (there is only its reset line) and MSI is supported.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// The SCI is not used on a hardware-reduced platform, but Linux compares
/// the FADT's SCI number with every interrupt override's source IRQ and
/// re-programs a match as a level/low SCI: name no ISA IRQ here, or IRQ 0
/// (the default 0) would lose the edge/high routing the MP table gives it.
const FADT_NO_SCI: u16 = 0xffff;

/// Each table starts on this boundary.
const TABLE_ALIGN: usize = 16;

/// Why the ACPI tables could not be written.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("the ACPI tables ({size} bytes) do not fit below {limit:#x}; use fewer vCPUs")]
    TooLarge { size: usize, limit: u64 },
    #[error("cannot write the ACPI tables to guest memory at {ACPI_RSDP_START:#x}; give the VM at least 1 MiB of memory")]
    GuestMemory,
}

/// Where each table landed (guest physical addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiLayout {
    pub rsdp: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    pub dsdt: u64,
}

/// The tables as one image to be written at [`ACPI_RSDP_START`].
#[derive(Debug, Clone)]
pub struct AcpiTables {
    pub image: Vec<u8>,
    pub layout: AcpiLayout,
}

/// Builds and writes the tables for `num_cpus` vCPUs, `mem_size` bytes of
/// RAM and a guest physical address width of `phys_bits`.
pub fn setup_acpi(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    mem_size: u64,
    phys_bits: u8,
) -> Result<AcpiLayout, AcpiError> {
    let tables = build_acpi_tables(num_cpus, mem_size, phys_bits)?;
    mem.write_slice(&tables.image, GuestAddress(ACPI_RSDP_START))
        .map_err(|_| AcpiError::GuestMemory)?;
    Ok(tables.layout)
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

/// Appends `bytes` to the image at the next aligned offset; returns its
/// guest address.
fn place(image: &mut Vec<u8>, bytes: &[u8]) -> u64 {
    let offset = image.len().next_multiple_of(TABLE_ALIGN);
    image.resize(offset, 0);
    image.extend_from_slice(bytes);
    ACPI_RSDP_START + offset as u64
}

/// Builds every table, laid out from [`ACPI_RSDP_START`].
pub fn build_acpi_tables(
    num_cpus: u8,
    mem_size: u64,
    phys_bits: u8,
) -> Result<AcpiTables, AcpiError> {
    let mut image = vec![0u8; (ACPI_TABLES_START - ACPI_RSDP_START) as usize];
    let dsdt = place(&mut image, dsdt(mem_size, phys_bits).as_slice());
    let fadt = place(&mut image, &bytes_of(&fadt(dsdt)));
    let madt = place(&mut image, madt(num_cpus).as_slice());
    let mut xsdt_table = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt_table.add_entry(fadt);
    xsdt_table.add_entry(madt);
    let xsdt = place(&mut image, &bytes_of(&xsdt_table));
    let rsdp = bytes_of(&Rsdp::new(OEM_ID, xsdt));
    image[..rsdp.len()].copy_from_slice(&rsdp);

    if ACPI_RSDP_START + image.len() as u64 > ACPI_TABLES_LIMIT {
        return Err(AcpiError::TooLarge {
            size: image.len(),
            limit: ACPI_TABLES_LIMIT,
        });
    }
    Ok(AcpiTables {
        image,
        layout: AcpiLayout {
            rsdp: ACPI_RSDP_START,
            xsdt,
            fadt,
            madt,
            dsdt,
        },
    })
}

/// A byte-wide register in port I/O.
fn io_byte_register(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn fadt(dsdt: u64) -> acpi_tables::fadt::FADT {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.sci_int = FADT_NO_SCI.into();
    f.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    f.reset_reg = io_byte_register(ACPI_RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.sleep_control_reg = io_byte_register(ACPI_SLEEP_CONTROL_PORT);
    f.sleep_status_reg = io_byte_register(ACPI_SLEEP_STATUS_PORT);
    f.finalize()
}

/// The MADT, as a generic SDT: the crate's MADT type has no interrupt
/// source override or local APIC NMI structures, so those are written here.
fn madt(num_cpus: u8) -> Sdt {
    let mut t = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, LAPIC_START as u32);
    t.write_u32(40, MADT_PCAT_COMPAT);
    for cpu in 0..num_cpus {
        // Processor UID = APIC id = vCPU index, as in the MP table.
        t.append_slice(&bytes_of(&ProcessorLocalApic::new(
            cpu,
            cpu,
            EnabledStatus::Enabled,
        )));
    }
    t.append_slice(&bytes_of(&IoApic::new(
        mptable::ioapic_id(num_cpus),
        IOAPIC_START as u32,
        0,
    )));
    for (irq, gsi, flags) in mptable::isa_irq_routes() {
        let mut s = vec![MADT_TYPE_INTERRUPT_OVERRIDE, 10, MADT_ISA_BUS, irq];
        s.extend_from_slice(&u32::from(gsi).to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        t.append_slice(&s);
    }
    let mut nmi = vec![MADT_TYPE_LOCAL_APIC_NMI, 6, MADT_ALL_PROCESSORS];
    nmi.extend_from_slice(&0u16.to_le_bytes()); // flags: conforming
    nmi.push(mptable::NMI_LINT);
    t.append_slice(&nmi);
    t
}

/// The DSDT's AML: the PCI host bridge and COM1 under `\_SB`, and `\_S5`.
fn dsdt_aml(mem_size: u64, phys_bits: u8) -> Vec<u8> {
    let m32 = mmio32_window();
    let m64 = mmio64_window(mem_size, phys_bits);
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cfg_ports = aml::IO::new(
        CONFIG_ADDRESS_PORT as u16,
        CONFIG_ADDRESS_PORT as u16,
        1,
        CONFIG_PORTS_LEN as u8,
    );
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32.start as u32,
        (m32.end - 1) as u32,
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m64.start,
        m64.end.wrapping_sub(1),
        None,
    );
    let mut resources: Vec<&dyn Aml> = vec![&bus, &cfg_ports, &mmio32];
    if !m64.is_empty() {
        resources.push(&mmio64);
    }
    let pci_crs = aml::ResourceTemplate::new(resources);
    let pci_hid = aml::EISAName::new("PNP0A03");
    // Each device is serialized in the statement that builds it (its names
    // are temporaries).
    let pci0 = bytes_of(&aml::Device::new(
        "PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &pci_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &pci_crs),
        ],
    ));

    let com1_io = aml::IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, COM1_PORT_LEN as u8);
    // Edge-triggered, active high, exclusive: the ISA default the MADT keeps.
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1 = bytes_of(&aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    ));
    let mut out = aml::Scope::raw("\\_SB_".into(), [pci0, com1].concat());

    // {SLP_TYPa, SLP_TYPb, reserved, reserved}; there is no PM1b block.
    let s5_typ = SLP_TYP_S5;
    let s5 = aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&s5_typ, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    );
    s5.to_aml_bytes(&mut out);
    out
}

fn dsdt(mem_size: u64, phys_bits: u8) -> Sdt {
    let mut t = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&dsdt_aml(mem_size, phys_bits));
    t
}

#[cfg(test)]
#[path = "acpi_tests.rs"]
mod tests;
