// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Kernel loading (bzImage, ELF vmlinux, PVH ELF), initrd, command line, boot params and e820.
//!
//! [`load_kernel`] sniffs the image format, loads it with linux-loader, puts
//! the initrd near the top of low RAM, writes the command line and the boot
//! parameters (`boot_params` or PVH `hvm_start_info`, see `bootparams`) and
//! returns where the bootstrap vCPU must start ([`BootEntry`]).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::bootparams::{
    write_cmdline, write_linux_boot_params, write_pvh_start_info, Initrd, ParamsError,
    BOOT_FLAG_MAGIC, HDRS_MAGIC,
};
use super::layout::{
    align_down, align_up, low_ram_end, CMDLINE_MAX_SIZE, DEFAULT_INITRD_ADDR_MAX, HIGH_RAM_START,
    MIB, PVH_INFO_START, ZERO_PAGE_START,
};

/// Where and how the bootstrap vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// Linux 64-bit boot protocol: long mode, RIP = entry, RSI = boot_params.
    Linux64 {
        entry: GuestAddress,
        boot_params: GuestAddress,
    },
    /// PVH: 32-bit protected mode, paging off, RIP = entry, EBX = start_info.
    Pvh {
        entry: GuestAddress,
        start_info: GuestAddress,
    },
}

/// Why a kernel could not be loaded. The text is what a user reads.
#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot read kernel {}: {source}; check the path given to --kernel", path.display())]
    KernelRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read initrd {}: {source}; check the path given to --initrd", path.display())]
    InitrdRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is neither a bzImage nor an ELF kernel: pass a bzImage, a vmlinux or a PVH ELF", path.display())]
    NotAKernel { path: PathBuf },
    #[error("{} is an ELF file but not a 64-bit little-endian x86 one ({what}): pass an x86_64 vmlinux or PVH ELF", path.display())]
    UnsupportedElf { path: PathBuf, what: &'static str },
    #[error("bzImage {} has no 64-bit entry point (boot protocol {version:#06x}): use an x86_64 Linux 3.8 or newer", path.display())]
    No64BitEntry { path: PathBuf, version: u16 },
    #[error("kernel {} needs guest memory up to {:#x} but RAM below 3 GiB ends at {ram_end:#x}: raise --mem to at least {} MiB", path.display(), needed_end, needed_end.div_ceil(MIB))]
    KernelTooLarge {
        path: PathBuf,
        needed_end: u64,
        ram_end: u64,
    },
    #[error("kernel {} wants to be loaded at {addr:#x}, below 1 MiB where the VMM keeps boot data: this is not a Linux kernel image we can boot", path.display())]
    KernelTooLow { path: PathBuf, addr: u64 },
    #[error("cannot load kernel {}: {source}; is the file a complete, uncorrupted kernel image?", path.display())]
    KernelLoad {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("initrd {} ({size} bytes) does not fit: only {room} bytes are free between the kernel end {kernel_end:#x} and {limit:#x}; raise --mem or use a smaller initrd", path.display())]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        room: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("--mem {mem} bytes is too small to boot anything: give at least {} MiB", MIN_MEM_SIZE / MIB)]
    MemTooSmall { mem: u64 },
    #[error(transparent)]
    Params(#[from] ParamsError),
}

/// Less than this cannot hold the boot data below 1 MiB plus any kernel.
pub const MIN_MEM_SIZE: u64 = 2 * MIB;

/// Linux's x86 COMMAND_LINE_SIZE (including the NUL): the limit for kernels
/// whose image does not state one.
const LINUX_COMMAND_LINE_SIZE: usize = 2048;
/// Boot protocol limit before 2.06 (no cmdline_size field).
const OLD_PROTOCOL_CMDLINE_MAX: usize = 255;

const BOOT_FLAG_OFFSET: usize = 0x1fe;
const HDRS_OFFSET: usize = 0x202;
const XLF_KERNEL_64: u16 = 1 << 0;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const ELF64_EHDR_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;

/// How much of the image is read to tell the formats apart.
const SNIFF_LEN: usize = 0x400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    BzImage,
    Elf,
}

/// Loads `kernel` (and `initrd`) into `mem` (a VM with `mem_size` bytes of
/// RAM), writes the command line and boot parameters and says where to start.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    if mem_size < MIN_MEM_SIZE {
        return Err(BootError::MemTooSmall { mem: mem_size });
    }
    let kernel_err = |source| BootError::KernelRead {
        path: kernel.to_path_buf(),
        source,
    };
    let mut file = File::open(kernel).map_err(kernel_err)?;
    let file_len = file.metadata().map_err(kernel_err)?.len();
    let mut head = Vec::with_capacity(SNIFF_LEN);
    (&mut file)
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(kernel_err)?;
    let ram_end = low_ram_end(mem_size);

    match sniff(kernel, &head)? {
        Format::BzImage => {
            let hdr = load_bzimage(mem, kernel, &mut file, &head, file_len, ram_end)?;
            let max_cmdline = bzimage_cmdline_max(&hdr);
            let cmdline = write_cmdline(mem, cmdline, max_cmdline)?;
            let kernel_end = bzimage_end(&hdr, file_len);
            let initrd_max = if hdr.version >= 0x0203 {
                u64::from(hdr.initrd_addr_max) + 1
            } else {
                DEFAULT_INITRD_ADDR_MAX
            };
            let initrd = load_initrd(mem, initrd, kernel_end, initrd_max.min(ram_end))?;
            write_linux_boot_params(mem, mem_size, Some(hdr), cmdline, initrd)?;
            Ok(BootEntry::Linux64 {
                // The 64-bit entry is 0x200 past the start of the protected-mode code.
                entry: GuestAddress(HIGH_RAM_START + 0x200),
                boot_params: GuestAddress(ZERO_PAGE_START),
            })
        }
        Format::Elf => {
            let (entry, pvh, kernel_end) = load_elf(mem, kernel, &mut file, &head, ram_end)?;
            let max_cmdline = (LINUX_COMMAND_LINE_SIZE - 1).min(CMDLINE_MAX_SIZE - 1);
            let cmdline = write_cmdline(mem, cmdline, max_cmdline)?;
            let limit = DEFAULT_INITRD_ADDR_MAX.min(ram_end);
            let initrd = load_initrd(mem, initrd, kernel_end, limit)?;
            match pvh {
                PvhBootCapability::PvhEntryPresent(pvh_entry) => {
                    write_pvh_start_info(mem, mem_size, cmdline, initrd)?;
                    Ok(BootEntry::Pvh {
                        entry: pvh_entry,
                        start_info: GuestAddress(PVH_INFO_START),
                    })
                }
                _ => {
                    write_linux_boot_params(mem, mem_size, None, cmdline, initrd)?;
                    Ok(BootEntry::Linux64 {
                        entry,
                        boot_params: GuestAddress(ZERO_PAGE_START),
                    })
                }
            }
        }
    }
}

fn sniff(path: &Path, head: &[u8]) -> Result<Format, BootError> {
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(BOOT_FLAG_OFFSET) == Some(BOOT_FLAG_MAGIC) && u32_at(HDRS_OFFSET) == Some(HDRS_MAGIC)
    {
        return Ok(Format::BzImage);
    }
    if head.starts_with(ELF_MAGIC) {
        let unsupported = |what| BootError::UnsupportedElf {
            path: path.to_path_buf(),
            what,
        };
        if head.len() < ELF64_EHDR_SIZE || head[4] != ELFCLASS64 {
            return Err(unsupported("not ELF64"));
        }
        if head[5] != ELFDATA2LSB {
            return Err(unsupported("big-endian"));
        }
        if u16_at(0x12) != Some(EM_X86_64) {
            return Err(unsupported("machine is not x86-64"));
        }
        return Ok(Format::Elf);
    }
    Err(BootError::NotAKernel {
        path: path.to_path_buf(),
    })
}

fn load_error(path: &Path) -> impl FnOnce(linux_loader::loader::Error) -> BootError + '_ {
    move |source| BootError::KernelLoad {
        path: path.to_path_buf(),
        source,
    }
}

/// The setup header as the image carries it at 0x1f1.
fn read_setup_header(head: &[u8]) -> Option<setup_header> {
    let mut hdr = setup_header::default();
    let size = std::mem::size_of::<setup_header>();
    let bytes = head.get(0x1f1..0x1f1 + size)?;
    // Copy through the ByteValued view linux-loader provides for setup_header.
    vm_memory::ByteValued::as_mut_slice(&mut hdr).copy_from_slice(bytes);
    Some(hdr)
}

/// Highest guest address the kernel uses while booting: it decompresses
/// itself to max(load address, pref_address) and needs init_size bytes there.
fn bzimage_end(hdr: &setup_header, file_len: u64) -> u64 {
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        hdr.setup_sects
    };
    let payload = file_len.saturating_sub((u64::from(setup_sects) + 1) * 512);
    let mut end = HIGH_RAM_START + payload;
    if hdr.version >= 0x020a {
        let base = HIGH_RAM_START.max(hdr.pref_address);
        end = end.max(base.saturating_add(u64::from(hdr.init_size)));
    }
    end
}

fn bzimage_cmdline_max(hdr: &setup_header) -> usize {
    let stated = if hdr.version >= 0x0206 {
        hdr.cmdline_size as usize
    } else {
        OLD_PROTOCOL_CMDLINE_MAX
    };
    stated.min(CMDLINE_MAX_SIZE - 1)
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    head: &[u8],
    file_len: u64,
    ram_end: u64,
) -> Result<setup_header, BootError> {
    let hdr = read_setup_header(head).ok_or_else(|| BootError::NotAKernel {
        path: path.to_path_buf(),
    })?;
    let version = hdr.version;
    if version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry {
            path: path.to_path_buf(),
            version,
        });
    }
    let needed_end = bzimage_end(&hdr, file_len);
    if needed_end > ram_end {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            needed_end,
            ram_end,
        });
    }
    let loaded = BzImage::load(mem, Some(GuestAddress(HIGH_RAM_START)), file, None)
        .map_err(load_error(path))?;
    // linux-loader hands back the header with code32_start set to the load address.
    loaded.setup_header.ok_or_else(|| BootError::NotAKernel {
        path: path.to_path_buf(),
    })
}

/// Physical extent [lowest, highest) of an ELF's PT_LOAD segments.
fn elf_extent(file: &mut File, head: &[u8]) -> std::io::Result<Option<(u64, u64)>> {
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(w)
    };
    let phoff = u64_at(head, 0x20);
    let phentsize = usize::from(u16_at(0x36));
    let phnum = usize::from(u16_at(0x38));
    if phentsize != ELF64_PHDR_SIZE {
        return Ok(None); // linux-loader rejects it with a precise error
    }
    let mut table = vec![0u8; phnum * ELF64_PHDR_SIZE];
    file.seek(SeekFrom::Start(phoff))?;
    file.read_exact(&mut table)?;
    let mut extent: Option<(u64, u64)> = None;
    for ph in table.chunks_exact(ELF64_PHDR_SIZE) {
        let p_type = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        if p_type != PT_LOAD {
            continue;
        }
        let start = u64_at(ph, 0x18);
        let end = start.saturating_add(u64_at(ph, 0x28));
        extent = Some(match extent {
            None => (start, end),
            Some((lo, hi)) => (lo.min(start), hi.max(end)),
        });
    }
    Ok(extent)
}

fn load_elf(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    head: &[u8],
    ram_end: u64,
) -> Result<(GuestAddress, PvhBootCapability, u64), BootError> {
    let read_err = |source| BootError::KernelRead {
        path: path.to_path_buf(),
        source,
    };
    if let Some((lo, hi)) = elf_extent(file, head).map_err(read_err)? {
        if lo < HIGH_RAM_START {
            return Err(BootError::KernelTooLow {
                path: path.to_path_buf(),
                addr: lo,
            });
        }
        if hi > ram_end {
            return Err(BootError::KernelTooLarge {
                path: path.to_path_buf(),
                needed_end: hi,
                ram_end,
            });
        }
    }
    let loaded =
        Elf::load(mem, None, file, Some(GuestAddress(HIGH_RAM_START))).map_err(load_error(path))?;
    Ok((loaded.kernel_load, loaded.pvh_boot_cap, loaded.kernel_end))
}

/// Reads the initrd to a page-aligned address as high as possible below
/// `limit` but above `kernel_end`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: Option<&Path>,
    kernel_end: u64,
    limit: u64,
) -> Result<Option<Initrd>, BootError> {
    let Some(path) = initrd else {
        return Ok(None);
    };
    let read_err = |source| BootError::InitrdRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let floor = align_up(kernel_end, 4096).unwrap_or(u64::MAX);
    let room = limit.saturating_sub(floor);
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        room,
        kernel_end,
        limit,
    };
    if size > room {
        return Err(too_large());
    }
    let addr = align_down(limit - size, 4096);
    if addr < floor {
        return Err(too_large());
    }
    let count = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, count)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => read_err(source),
            other => ParamsError::GuestMemory {
                what: "the initrd",
                addr,
                reason: other.to_string(),
            }
            .into(),
        })?;
    Ok(Some(Initrd { addr, size }))
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
