// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests for `boot`: synthetic bzImages and ELF kernels built in temp files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::arch::x86_64::layout::{
    ram_regions, ACPI_RSDP_START, CMDLINE_START, EBDA_START, PVH_MEMMAP_START, PVH_MODLIST_START,
};

/// A file in the temp dir that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ivvmm-boot-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn guest(mem_size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&ram_regions(mem_size)).unwrap()
}

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_le_bytes());
}

const SETUP_SECTS: usize = 4;
const PAYLOAD: &[u8] = b"\x48\x31\xc0protected-mode kernel payload";

/// A minimal bzImage: setup sectors with a protocol 2.15 header, then a payload.
fn bzimage(init_size: u32, initrd_addr_max: u32, cmdline_size: u32) -> Vec<u8> {
    let mut img = vec![0u8; (SETUP_SECTS + 1) * 512];
    img[0x1f1] = SETUP_SECTS as u8;
    put16(&mut img, 0x1fe, 0xaa55);
    put32(&mut img, 0x202, 0x5372_6448);
    put16(&mut img, 0x206, 0x020f);
    img[0x211] = 0x01; // LOADED_HIGH
    put32(&mut img, 0x214, 0x10_0000); // code32_start
    put32(&mut img, 0x22c, initrd_addr_max);
    put32(&mut img, 0x230, 0x20_0000); // kernel_alignment
    img[0x234] = 1; // relocatable
    put16(&mut img, 0x236, 0x1); // XLF_KERNEL_64
    put32(&mut img, 0x238, cmdline_size);
    put64(&mut img, 0x258, 0x100_0000); // pref_address
    put32(&mut img, 0x260, init_size);
    img.extend_from_slice(PAYLOAD);
    img
}

const ELF_LOAD_ADDR: u64 = 0x100_0000;

/// A minimal x86_64 ELF with one PT_LOAD at 16 MiB and optionally a PVH note.
fn elf(pvh_entry: Option<u32>, memsz: u64) -> Vec<u8> {
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let phoff = 64usize;
    let data_off = phoff + 56 * phnum;
    let note_off = data_off + PAYLOAD.len();
    let mut img = vec![0u8; note_off];
    img[0..4].copy_from_slice(b"\x7fELF");
    img[4] = 2; // ELFCLASS64
    img[5] = 1; // little-endian
    img[6] = 1; // EV_CURRENT
    put16(&mut img, 0x10, 2); // ET_EXEC
    put16(&mut img, 0x12, 62); // EM_X86_64
    put32(&mut img, 0x14, 1);
    put64(&mut img, 0x18, ELF_LOAD_ADDR); // e_entry (physical, like phys_startup_64)
    put64(&mut img, 0x20, phoff as u64);
    put16(&mut img, 0x34, 64);
    put16(&mut img, 0x36, 56);
    put16(&mut img, 0x38, phnum as u16);
    let ph = phoff;
    put32(&mut img, ph, 1); // PT_LOAD
    put64(&mut img, ph + 8, data_off as u64);
    put64(&mut img, ph + 0x10, ELF_LOAD_ADDR);
    put64(&mut img, ph + 0x18, ELF_LOAD_ADDR);
    put64(&mut img, ph + 0x20, PAYLOAD.len() as u64);
    put64(&mut img, ph + 0x28, memsz);
    img[data_off..note_off].copy_from_slice(PAYLOAD);
    if let Some(entry) = pvh_entry {
        // Note: namesz 4 ("Xen\0"), descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&18u32.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
        let ph = phoff + 56;
        put32(&mut img, ph, 4); // PT_NOTE
        put64(&mut img, ph + 8, note_off as u64);
        put64(&mut img, ph + 0x20, note.len() as u64);
        put64(&mut img, ph + 0x28, note.len() as u64);
        img.extend_from_slice(&note);
    }
    img
}

fn zero_page(mem: &GuestMemoryMmap) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap()
}

fn cmdline_at(mem: &GuestMemoryMmap, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len + 1];
    mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
        .unwrap();
    buf
}

#[test]
fn bzimage_is_loaded_at_1m_with_a_64_bit_entry_and_full_boot_params() {
    let mem_size = 256 * MIB;
    let mem = guest(mem_size);
    let kernel = TempFile::new(&bzimage(0x80_0000, 0x37ff_ffff, 2047));
    let initrd = TempFile::new(&[0xab; 10_000]);
    let entry = load_kernel(
        &mem,
        mem_size,
        &kernel.0,
        Some(&initrd.0),
        "console=ttyS0 quiet",
    )
    .unwrap();
    assert_eq!(
        entry,
        BootEntry::Linux64 {
            entry: GuestAddress(0x10_0200),
            boot_params: GuestAddress(ZERO_PAGE_START)
        }
    );

    let mut payload = vec![0u8; PAYLOAD.len()];
    mem.read_slice(&mut payload, GuestAddress(HIGH_RAM_START))
        .unwrap();
    assert_eq!(payload, PAYLOAD);

    let bp = zero_page(&mem);
    let hdr = bp.hdr;
    assert_eq!({ hdr.boot_flag }, 0xaa55);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!(hdr.type_of_loader, 0xff);
    assert_ne!(hdr.loadflags & 1, 0);
    assert_eq!({ hdr.code32_start }, HIGH_RAM_START as u32);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.cmdline_size }, 2047, "the kernel's limit is kept");
    assert_eq!(cmdline_at(&mem, 19), b"console=ttyS0 quiet\0");
    assert_eq!({ bp.acpi_rsdp_addr }, ACPI_RSDP_START);

    let (rd_addr, rd_size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
    assert_eq!(rd_size, 10_000);
    assert_eq!(rd_addr % 4096, 0);
    assert!(rd_addr + rd_size <= mem_size, "initrd below the top of RAM");
    assert!(
        mem_size - (rd_addr + rd_size) < 4096,
        "initrd as high as possible"
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(rd_addr + 9_999)).unwrap(),
        0xab
    );

    assert_eq!(bp.e820_entries, 3);
    let e = bp.e820_table;
    assert_eq!(
        ({ e[0].addr }, { e[0].size }, { e[0].r#type }),
        (0, EBDA_START, 1)
    );
    assert_eq!(({ e[1].addr }, { e[1].r#type }), (EBDA_START, 2));
    assert_eq!(
        ({ e[2].addr }, { e[2].size }, { e[2].r#type }),
        (HIGH_RAM_START, mem_size - HIGH_RAM_START, 1)
    );
}

#[test]
fn bzimage_initrd_respects_initrd_addr_max() {
    let mem_size = 2048 * MIB;
    let mem = guest(mem_size);
    let kernel = TempFile::new(&bzimage(0x80_0000, 0x0fff_ffff, 2047));
    let initrd = TempFile::new(&[1; 5000]);
    load_kernel(&mem, mem_size, &kernel.0, Some(&initrd.0), "").unwrap();
    let hdr = zero_page(&mem).hdr;
    let end = u64::from(hdr.ramdisk_image) + u64::from(hdr.ramdisk_size);
    assert!(end <= 0x1000_0000);
    assert!(end > 0x1000_0000 - 4096);
}

#[test]
fn bzimage_cmdline_longer_than_the_kernel_allows_is_refused() {
    let mem = guest(64 * MIB);
    let kernel = TempFile::new(&bzimage(0x80_0000, 0x37ff_ffff, 10));
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, "console=ttyS0").unwrap_err();
    assert!(
        matches!(
            err,
            BootError::Params(ParamsError::CmdlineTooLong { len: 13, max: 10 })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("shorten"));
}

#[test]
fn bzimage_that_needs_more_memory_than_the_vm_has_is_refused() {
    // init_size 64 MiB from pref_address 16 MiB needs RAM up to 80 MiB.
    let mem = guest(32 * MIB);
    let kernel = TempFile::new(&bzimage(64 << 20, 0x37ff_ffff, 2047));
    let err = load_kernel(&mem, 32 * MIB, &kernel.0, None, "").unwrap_err();
    assert!(
        matches!(
            err,
            BootError::KernelTooLarge {
                needed_end: 0x500_0000,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("--mem to at least 80 MiB"),
        "{err}"
    );
}

#[test]
fn bzimage_without_64_bit_entry_is_refused() {
    let mut img = bzimage(0x80_0000, 0x37ff_ffff, 2047);
    put16(&mut img, 0x236, 0);
    let kernel = TempFile::new(&img);
    let mem = guest(64 * MIB);
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, "").unwrap_err();
    assert!(matches!(err, BootError::No64BitEntry { .. }), "{err}");
}

#[test]
fn initrd_that_does_not_fit_names_sizes_and_the_fix() {
    let mem_size = 32 * MIB;
    let mem = guest(mem_size);
    // The kernel occupies 16 MiB + 8 MiB; 8 MiB remain.
    let kernel = TempFile::new(&bzimage(8 << 20, 0x37ff_ffff, 2047));
    let initrd = TempFile::new(&vec![0u8; 9 << 20]);
    let err = load_kernel(&mem, mem_size, &kernel.0, Some(&initrd.0), "").unwrap_err();
    match &err {
        BootError::InitrdTooLarge { size, room, .. } => {
            assert_eq!(*size, 9 << 20);
            assert_eq!(*room, 8 << 20);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("raise --mem"));
    // 8 MiB exactly fits.
    let initrd = TempFile::new(&vec![0u8; 8 << 20]);
    load_kernel(&mem, mem_size, &kernel.0, Some(&initrd.0), "").unwrap();
}

#[test]
fn vmlinux_elf_boots_linux64_at_its_entry_with_a_built_header() {
    let mem_size = 64 * MIB;
    let mem = guest(mem_size);
    let kernel = TempFile::new(&elf(None, 0x20_0000));
    let initrd = TempFile::new(&[7; 100]);
    let entry = load_kernel(&mem, mem_size, &kernel.0, Some(&initrd.0), "root=/dev/ram0").unwrap();
    assert_eq!(
        entry,
        BootEntry::Linux64 {
            entry: GuestAddress(ELF_LOAD_ADDR),
            boot_params: GuestAddress(ZERO_PAGE_START)
        }
    );
    let mut payload = vec![0u8; PAYLOAD.len()];
    mem.read_slice(&mut payload, GuestAddress(ELF_LOAD_ADDR))
        .unwrap();
    assert_eq!(payload, PAYLOAD);
    let bp = zero_page(&mem);
    let hdr = bp.hdr;
    assert_eq!(
        ({ hdr.boot_flag }, { hdr.header }, hdr.type_of_loader),
        (0xaa55, 0x5372_6448, 0xff)
    );
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    assert_eq!({ hdr.ramdisk_size }, 100);
    assert!(u64::from(hdr.ramdisk_image) >= ELF_LOAD_ADDR + 0x20_0000);
    assert_eq!({ bp.acpi_rsdp_addr }, ACPI_RSDP_START);
    assert_eq!(bp.e820_entries, 3);
}

#[test]
fn pvh_elf_boots_through_start_info() {
    let mem_size = 64 * MIB;
    let mem = guest(mem_size);
    let kernel = TempFile::new(&elf(Some(0x100_0040), 0x10_0000));
    let initrd = TempFile::new(&[9; 3000]);
    let entry = load_kernel(&mem, mem_size, &kernel.0, Some(&initrd.0), "console=hvc0").unwrap();
    assert_eq!(
        entry,
        BootEntry::Pvh {
            entry: GuestAddress(0x100_0040),
            start_info: GuestAddress(PVH_INFO_START)
        }
    );
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, 0x336e_c578);
    assert_eq!(info.version, 1);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.rsdp_paddr, ACPI_RSDP_START);
    assert_eq!(cmdline_at(&mem, 12), b"console=hvc0\0");
    assert_eq!(
        (info.memmap_paddr, info.memmap_entries),
        (PVH_MEMMAP_START, 3)
    );
    let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
    assert_eq!((e.addr, e.type_), (EBDA_START, 2));
    let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(PVH_MEMMAP_START + 48)).unwrap();
    assert_eq!(
        (e.addr, e.size, e.type_),
        (HIGH_RAM_START, mem_size - HIGH_RAM_START, 1)
    );
    assert_eq!(
        (info.nr_modules, info.modlist_paddr),
        (1, PVH_MODLIST_START)
    );
    let m: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
    assert_eq!(m.size, 3000);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(m.paddr)).unwrap(), 9);
}

#[test]
fn pvh_without_initrd_has_no_modules() {
    let mem = guest(64 * MIB);
    let kernel = TempFile::new(&elf(Some(0x100_0040), 0x10_0000));
    load_kernel(&mem, 64 * MIB, &kernel.0, None, "").unwrap();
    let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
}

#[test]
fn elf_beyond_ram_is_refused_before_loading() {
    let mem = guest(20 * MIB);
    let kernel = TempFile::new(&elf(None, 8 << 20));
    let err = load_kernel(&mem, 20 * MIB, &kernel.0, None, "").unwrap_err();
    assert!(
        matches!(
            err,
            BootError::KernelTooLarge {
                needed_end: 0x180_0000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("at least 24 MiB"), "{err}");
}

#[test]
fn elf_of_another_architecture_is_refused() {
    let mut img = elf(None, 0x1000);
    put16(&mut img, 0x12, 183); // aarch64
    let kernel = TempFile::new(&img);
    let mem = guest(64 * MIB);
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, "").unwrap_err();
    assert!(matches!(err, BootError::UnsupportedElf { .. }), "{err}");
}

#[test]
fn random_bytes_are_not_a_kernel() {
    let kernel = TempFile::new(b"#!/bin/sh\necho this is not a kernel\n");
    let mem = guest(64 * MIB);
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, "").unwrap_err();
    assert!(matches!(err, BootError::NotAKernel { .. }));
    let text = err.to_string();
    assert!(
        text.contains(
            "is neither a bzImage nor an ELF kernel: pass a bzImage, a vmlinux or a PVH ELF"
        ),
        "{text}"
    );
}

#[test]
fn missing_kernel_and_initrd_name_the_path_and_the_flag() {
    let mem = guest(64 * MIB);
    let missing = std::env::temp_dir().join("ivvmm-definitely-missing-kernel");
    let err = load_kernel(&mem, 64 * MIB, &missing, None, "").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("ivvmm-definitely-missing-kernel") && text.contains("--kernel"),
        "{text}"
    );

    let kernel = TempFile::new(&elf(None, 0x1000));
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, Some(&missing), "").unwrap_err();
    assert!(matches!(err, BootError::InitrdRead { .. }));
    assert!(err.to_string().contains("--initrd"));
}

#[test]
fn cmdline_with_nul_is_refused() {
    let mem = guest(64 * MIB);
    let kernel = TempFile::new(&elf(None, 0x1000));
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, "a\0b").unwrap_err();
    assert!(matches!(err, BootError::Params(ParamsError::CmdlineNul)));
}

#[test]
fn elf_cmdline_limit_is_linux_command_line_size() {
    let mem = guest(64 * MIB);
    let kernel = TempFile::new(&elf(None, 0x1000));
    load_kernel(&mem, 64 * MIB, &kernel.0, None, &"x".repeat(2047)).unwrap();
    let err = load_kernel(&mem, 64 * MIB, &kernel.0, None, &"x".repeat(2048)).unwrap_err();
    assert!(matches!(
        err,
        BootError::Params(ParamsError::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
}

#[test]
fn tiny_memory_is_refused_up_front() {
    let mem = guest(MIB);
    let kernel = TempFile::new(&elf(None, 0x1000));
    let err = load_kernel(&mem, MIB, &kernel.0, None, "").unwrap_err();
    assert!(matches!(err, BootError::MemTooSmall { .. }));
}
