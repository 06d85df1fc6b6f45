// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ivshm mmio FILE OFFSET [WIDTH [VALUE]]`: busybox `devmem`, but on a
//! PCI resource file in sysfs (`/sys/bus/pci/devices/*/resourceN`), so a
//! script can drive a device with no driver bound. Our guest kernel has no
//! /dev/mem (CONFIG_DEVMEM is off), which busybox devmem needs.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::io::AsRawFd;

use crate::args::MmioOpts;
use crate::Error;

const PAGE: u64 = 4096;

/// One access; returns what a read read (None for a write).
pub fn access(o: &MmioOpts) -> Result<Option<u64>, Error> {
    let err = |e: io::Error| Error::Mmio(o.file.clone(), e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&o.file)
        .map_err(err)?;
    let size = file.metadata().map_err(err)?.len();
    let bytes = u64::from(o.width / 8);
    if o.offset % bytes != 0 || o.offset.checked_add(bytes).is_none_or(|end| end > size) {
        return Err(Error::OutOfRange(o.offset));
    }
    let page = o.offset & !(PAGE - 1);
    let in_page = (o.offset - page) as usize;
    let file_off = libc::off_t::try_from(page).map_err(|_| Error::OutOfRange(o.offset))?;
    // SAFETY: a fresh shared mapping of one page of the file, chosen by
    // the kernel; only this function uses it, and it is unmapped below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            file_off,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: in_page + bytes <= PAGE (the offset is aligned to its width),
    // so the pointer is inside the mapping and naturally aligned.
    let p = unsafe { base.cast::<u8>().add(in_page) };
    // SAFETY (all four arms): `p` is a live, aligned device address of the
    // access's width; volatile so the access happens exactly once, with
    // exactly that width, as a register expects.
    let got = unsafe {
        match (o.width, o.value) {
            (8, None) => Some(u64::from(p.read_volatile())),
            (16, None) => Some(u64::from(p.cast::<u16>().read_volatile())),
            (32, None) => Some(u64::from(p.cast::<u32>().read_volatile())),
            (_, None) => Some(p.cast::<u64>().read_volatile()),
            (8, Some(v)) => {
                p.write_volatile(v as u8);
                None
            }
            (16, Some(v)) => {
                p.cast::<u16>().write_volatile(v as u16);
                None
            }
            (32, Some(v)) => {
                p.cast::<u32>().write_volatile(v as u32);
                None
            }
            (_, Some(v)) => {
                p.cast::<u64>().write_volatile(v);
                None
            }
        }
    };
    // SAFETY: the mapping made above; no reference into it remains.
    unsafe { libc::munmap(base, PAGE as usize) };
    Ok(got)
}

/// devmem's output: `0x` and width/4 upper-case hex digits.
pub fn format(width: u32, value: u64) -> String {
    format!("0x{:0w$X}", value, w = (width / 4) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn opts(file: &str, offset: u64, width: u32, value: Option<u64>) -> MmioOpts {
        MmioOpts {
            file: file.into(),
            offset,
            width,
            value,
        }
    }

    #[test]
    fn output_matches_busybox_devmem() {
        assert_eq!(format(32, 0x1f), "0x0000001F");
        assert_eq!(format(8, 0xab), "0xAB");
        assert_eq!(format(64, 1 << 40), "0x0000010000000000");
    }

    #[test]
    fn reads_and_writes_every_width_in_a_file() {
        // A regular file stands in for a resource file: both can be mapped.
        let dir = std::env::temp_dir().join(format!("ivshm-mmio-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let f = dir.to_str().unwrap();
        access(&opts(f, 4096 + 8, 64, Some(0x1122_3344_5566_7788))).unwrap();
        access(&opts(f, 4096 + 2, 16, Some(0xbeef))).unwrap();
        access(&opts(f, 1, 8, Some(0x5a))).unwrap();
        assert_eq!(
            access(&opts(f, 4096 + 12, 32, None)).unwrap(),
            Some(0x1122_3344)
        );
        assert_eq!(access(&opts(f, 4096, 32, None)).unwrap(), Some(0xbeef_0000));
        assert_eq!(access(&opts(f, 0, 16, None)).unwrap(), Some(0x5a00));
        let mut b = [0u8; 8];
        std::fs::File::open(&dir)
            .unwrap()
            .read_exact_at(&mut b, 4096 + 8)
            .unwrap();
        assert_eq!(u64::from_le_bytes(b), 0x1122_3344_5566_7788);
        // Misaligned or past the end: refused, nothing mapped.
        assert!(matches!(
            access(&opts(f, 2, 32, None)),
            Err(Error::OutOfRange(2))
        ));
        assert!(matches!(
            access(&opts(f, 8192, 8, None)),
            Err(Error::OutOfRange(8192))
        ));
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(access(&opts(f, 0, 8, None)), Err(Error::Mmio(..))));
    }
}
