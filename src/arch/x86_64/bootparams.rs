// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The data a kernel reads at entry: the command line, Linux `boot_params`
//! (the zero page, with the e820 map) and PVH `hvm_start_info` (with its
//! memory map and module list); both point at the ACPI RSDP. Written with linux-loader's configurators.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use thiserror::Error;

use super::layout::{
    e820_map, ACPI_RSDP_START, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};

/// Where the initrd landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initrd {
    pub addr: u64,
    pub size: u64,
}

/// The command line as written to guest memory (length without the NUL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdlineInfo {
    pub addr: u64,
    pub len: usize,
    /// The longest command line this kernel accepts (without the NUL).
    pub max: usize,
}

/// Writing the boot data into guest memory failed. The text is what a user
/// reads.
#[derive(Debug, Error)]
pub enum ParamsError {
    #[error(
        "kernel command line is {len} bytes but this kernel accepts at most {max}: shorten it"
    )]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line contains a NUL byte: remove it")]
    CmdlineNul,
    #[error("cannot write {what} to guest memory at {addr:#x}: {reason}; give the VM more memory (--mem)")]
    GuestMemory {
        what: &'static str,
        addr: u64,
        reason: String,
    },
}

/// The setup header's boot flag (at 0x1fe of a bzImage) and "HdrS" magic
/// (at 0x202): a kernel has them, and so must a header we build.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
pub const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: we have no id registered with Linux.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// The kernel was loaded at 1 MiB or above.
const LOADED_HIGH: u8 = 1 << 0;
/// Physical alignment a vmlinux is built for (CONFIG_PHYSICAL_ALIGN default).
const VMLINUX_ALIGNMENT: u32 = 0x0100_0000;
/// Protocol version we claim when building a header for a vmlinux.
const VMLINUX_PROTOCOL: u16 = 0x020f;

fn guest_err(what: &'static str, addr: u64) -> impl FnOnce(String) -> ParamsError {
    move |reason| ParamsError::GuestMemory { what, addr, reason }
}

/// Writes `cmdline` and its NUL at [`CMDLINE_START`] after checking it
/// against `max` (the kernel's limit, without the NUL).
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    max: usize,
) -> Result<CmdlineInfo, ParamsError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(ParamsError::CmdlineNul);
    }
    let len = cmdline.len();
    if len > max {
        return Err(ParamsError::CmdlineTooLong { len, max });
    }
    let mut bytes = Vec::with_capacity(len + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| guest_err("the command line", CMDLINE_START)(e.to_string()))?;
    Ok(CmdlineInfo {
        addr: CMDLINE_START,
        len,
        max,
    })
}

/// Builds the zero page: the image's setup header (bzImage) or a minimal one
/// (vmlinux), loader type, command line, initrd and the e820 map.
pub fn linux_boot_params(
    mem_size: u64,
    hdr: Option<setup_header>,
    cmdline: CmdlineInfo,
    initrd: Option<Initrd>,
) -> boot_params {
    let mut params = boot_params::default();
    match hdr {
        Some(h) => {
            params.hdr = h;
            params.hdr.loadflags |= LOADED_HIGH;
        }
        None => {
            params.hdr.boot_flag = BOOT_FLAG_MAGIC;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.version = VMLINUX_PROTOCOL;
            params.hdr.kernel_alignment = VMLINUX_ALIGNMENT;
            params.hdr.loadflags = LOADED_HIGH;
            params.hdr.cmdline_size = cmdline.max as u32;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = cmdline.addr as u32;
    // Where the VMM writes the ACPI tables (see `acpi`); the guest may also
    // find the RSDP by scanning the BIOS area.
    params.acpi_rsdp_addr = ACPI_RSDP_START;
    if let Some(rd) = initrd {
        // The initrd lies below 4 GiB (it is placed in low RAM).
        params.hdr.ramdisk_image = rd.addr as u32;
        params.hdr.ramdisk_size = rd.size as u32;
        params.ext_ramdisk_image = (rd.addr >> 32) as u32;
        params.ext_ramdisk_size = (rd.size >> 32) as u32;
    }
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

/// Writes [`linux_boot_params`] at [`ZERO_PAGE_START`].
pub fn write_linux_boot_params(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    hdr: Option<setup_header>,
    cmdline: CmdlineInfo,
    initrd: Option<Initrd>,
) -> Result<(), ParamsError> {
    let params = linux_boot_params(mem_size, hdr, cmdline, initrd);
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| guest_err("the zero page", ZERO_PAGE_START)(e.to_string()))
}

/// Builds the PVH start info, its memory map and (with an initrd) one module.
pub fn pvh_start_info(
    mem_size: u64,
    cmdline: CmdlineInfo,
    initrd: Option<Initrd>,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = e820_map(mem_size)
        .iter()
        .take(PVH_MEMMAP_MAX_ENTRIES)
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            // The PVH memory map types are the e820 types.
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let modules: Vec<_> = initrd
        .iter()
        .map(|rd| hvm_modlist_entry {
            paddr: rd.addr,
            size: rd.size,
            cmdline_paddr: 0,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        flags: 0,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: cmdline.addr,
        rsdp_paddr: ACPI_RSDP_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        reserved: 0,
    };
    (info, memmap, modules)
}

/// Writes [`pvh_start_info`] at [`PVH_INFO_START`] and its tables.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline: CmdlineInfo,
    initrd: Option<Initrd>,
) -> Result<(), ParamsError> {
    let (info, memmap, modules) = pvh_start_info(mem_size, cmdline, initrd);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| guest_err("the PVH start info", PVH_INFO_START)(e.to_string()))
}
