// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The guest physical memory map: every fixed address lives here and nowhere else.
//!
//! ```text
//! 0x0000_0000  real-mode IVT and BIOS data area (left zero)
//! 0x0000_0500  GDT                      0x0000_0540  IDT (one null gate)
//! 0x0000_6000  PVH hvm_start_info       0x0000_6040  PVH module list
//! 0x0000_6100  PVH memory map           0x0000_7000  zero page (boot_params)
//! 0x0000_8ff0  boot stack (grows down)  0x0000_9000  PML4
//! 0x0000_a000  PDPT                     0x0000_b000  4 PDs (identity 0..4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP floating pointer + MP config table (reserved to 1 MiB)
//! 0x000e_0000  ACPI: RSDP (BIOS area, where Linux scans), then XSDT, FADT, MADT, DSDT
//! 0x0010_0000  HIGH_RAM_START: bzImage payload; initrd near the top of low RAM
//! 0xC000_0000  32-bit MMIO window (BAR0, BAR1) .. 0xFEC0_0000
//! 0xFEC0_0000  IOAPIC                   0xFEE0_0000  LAPIC
//! 0x1_0000_0000  RAM above 3 GiB continues here
//! max(4 GiB, end of RAM) rounded up to 1 GiB: 64-bit MMIO window (BAR2) .. 2^phys_bits
//! ```

use std::ops::Range;

use vm_memory::GuestAddress;

/// 1 KiB, 1 MiB, 1 GiB.
pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Global descriptor table used at boot (6 slots: see `regs`).
pub const GDT_START: u64 = 0x500;
/// Interrupt descriptor table: one null gate; the kernel installs its own.
pub const IDT_START: u64 = 0x540;

/// PVH `hvm_start_info` (56 bytes).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list: one `hvm_modlist_entry` (32 bytes) for the initrd.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map entries (24 bytes each) up to the zero page.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// How many PVH memory map entries fit before the zero page.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;

/// Linux `boot_params` (the "zero page", 4 KiB).
pub const ZERO_PAGE_START: u64 = 0x7000;

/// Initial stack pointer; the stack grows down into 0x8000..0x8ff0.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Boot page tables: PML4, one PDPT, four PDs identity-mapping 0..4 GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Number of page directories (each maps 1 GiB with 2 MiB pages).
pub const PD_COUNT: u64 = 4;

/// Kernel command line and the room reserved for it (terminating NUL included).
pub const CMDLINE_START: u64 = 0x2_0000;
pub const CMDLINE_MAX_SIZE: usize = 0x1000;

/// Extended BIOS data area: from here to 1 MiB is reserved in the e820 map.
pub const EBDA_START: u64 = 0x9_fc00;
/// The MP floating pointer sits at the EBDA, where Linux scans for it (the last
/// KiB of base memory); the config table follows it. A large table (many
/// vCPUs) runs past 0xa0000 into the reserved hole, which is plain RAM to us.
pub const MPTABLE_START: u64 = EBDA_START;
/// The MP table must end before this (the legacy BIOS ROM area starts at
/// 0xe0000, where the ACPI tables live).
pub const MPTABLE_LIMIT: u64 = 0xe_0000;
/// The ACPI root pointer (RSDP): at the start of the BIOS area
/// 0xe0000..0x100000, 16-byte aligned, where an OS that was told nothing
/// scans for it. Boot params and PVH start info also point here.
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// The other ACPI tables (XSDT, FADT, MADT, DSDT) follow the RSDP ...
pub const ACPI_TABLES_START: u64 = ACPI_RSDP_START + 0x40;
/// ... and must end before this (the e820 map reserves it all).
pub const ACPI_TABLES_LIMIT: u64 = HIGH_RAM_START;

/// ACPI power-management registers in port I/O, as the FADT names them:
/// the sleep control register (SLP_TYP/SLP_EN, poweroff), the sleep status
/// register (WAK_STS) and the reset register.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x600;
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x601;
pub const ACPI_RESET_PORT: u16 = 0x602;
/// The power device covers these ports, from the sleep control register on.
pub const ACPI_PM_PORTS_LEN: u16 = 3;
/// Start of the legacy VGA hole (the end of "base memory").
pub const VGA_HOLE_START: u64 = 0xa_0000;

/// First byte above the legacy hole: the bzImage protected-mode kernel goes here.
pub const HIGH_RAM_START: u64 = 0x10_0000;

/// RAM below 4 GiB ends here at most; RAM above continues at [`RAM_ABOVE_4G_START`].
pub const LOW_RAM_MAX_END: u64 = 3 * GIB;
pub const RAM_ABOVE_4G_START: u64 = 4 * GIB;

/// 32-bit MMIO window for small BARs (ivshmem BAR0 registers, BAR1 MSI-X).
pub const MMIO32_START: u64 = 0xC000_0000;
pub const MMIO32_END: u64 = IOAPIC_START;

/// In-kernel IOAPIC and local APIC (default addresses).
pub const IOAPIC_START: u64 = 0xFEC0_0000;
pub const LAPIC_START: u64 = 0xFEE0_0000;

/// Alignment of the start of the 64-bit MMIO window.
pub const MMIO64_ALIGN: u64 = GIB;
/// Guest physical address width used when CPUID does not report one; every
/// x86_64 CPU supports 36 bits.
pub const DEFAULT_PHYS_BITS: u8 = 36;
/// Largest physical address width the architecture allows.
pub const MAX_PHYS_BITS: u8 = 52;

/// Highest address (exclusive) the default Linux initrd may reach when the
/// kernel does not say otherwise (boot protocol `initrd_addr_max` default).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x3800_0000;

// The map's ordering, checked when compiling.
const _: () = assert!(MMIO32_START == LOW_RAM_MAX_END);
const _: () = assert!(MMIO32_END <= IOAPIC_START);
const _: () = assert!(IOAPIC_START < LAPIC_START);
const _: () = assert!(LAPIC_START < RAM_ABOVE_4G_START);
const _: () = assert!(MPTABLE_LIMIT <= HIGH_RAM_START);
const _: () = assert!(MPTABLE_LIMIT <= ACPI_RSDP_START && ACPI_RSDP_START % 16 == 0);
const _: () = assert!(ACPI_TABLES_LIMIT <= HIGH_RAM_START && EBDA_START < ACPI_RSDP_START);
const _: () = assert!(ACPI_SLEEP_STATUS_PORT == ACPI_SLEEP_CONTROL_PORT + 1);
const _: () = assert!(ACPI_RESET_PORT == ACPI_SLEEP_CONTROL_PORT + 2);
const _: () = assert!(ACPI_PM_PORTS_LEN == ACPI_RESET_PORT - ACPI_SLEEP_CONTROL_PORT + 1);

/// e820 entry types (ACPI address range types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One e820 map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// End (exclusive) of RAM below 4 GiB.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(LOW_RAM_MAX_END)
}

/// Bytes of RAM placed above 4 GiB.
pub fn high_ram_size(mem_size: u64) -> u64 {
    mem_size.saturating_sub(LOW_RAM_MAX_END)
}

/// The guest RAM regions for `mem_size` bytes of memory: below 3 GiB, then the
/// rest from 4 GiB. Feed these to `GuestMemoryMmap::from_ranges`.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = Vec::with_capacity(2);
    let low = low_ram_end(mem_size);
    if low > 0 {
        regions.push((GuestAddress(0), low as usize));
    }
    let high = high_ram_size(mem_size);
    if high > 0 {
        regions.push((GuestAddress(RAM_ABOVE_4G_START), high as usize));
    }
    regions
}

/// The e820 map the guest sees: usable base memory, the reserved EBDA/BIOS
/// hole, usable RAM from 1 MiB and above 4 GiB. MMIO windows are not listed.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low = low_ram_end(mem_size);
    let mut map = Vec::with_capacity(4);
    let mut push = |addr: u64, end: u64, kind| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    push(0, low.min(EBDA_START), E820Kind::Ram);
    push(EBDA_START, HIGH_RAM_START, E820Kind::Reserved);
    push(HIGH_RAM_START, low, E820Kind::Ram);
    let high = high_ram_size(mem_size);
    push(
        RAM_ABOVE_4G_START,
        RAM_ABOVE_4G_START.saturating_add(high),
        E820Kind::Ram,
    );
    map
}

/// Clamps a CPUID-reported physical address width to something usable.
pub fn sane_phys_bits(phys_bits: u8) -> u8 {
    if (DEFAULT_PHYS_BITS..=MAX_PHYS_BITS).contains(&phys_bits) {
        phys_bits
    } else {
        DEFAULT_PHYS_BITS
    }
}

/// The 64-bit MMIO window: from `max(4 GiB, end of RAM)` rounded up to 1 GiB
/// to the guest physical-address limit. Empty when RAM already reaches it.
pub fn mmio64_window(mem_size: u64, phys_bits: u8) -> Range<u64> {
    let ram_end = RAM_ABOVE_4G_START.saturating_add(high_ram_size(mem_size));
    let start = align_up(ram_end, MMIO64_ALIGN).unwrap_or(u64::MAX);
    let end = 1u64 << sane_phys_bits(phys_bits);
    start..end.max(start)
}

/// Rounds `value` up to `align` (a power of two); `None` on overflow.
pub fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    let mask = align - 1;
    value.checked_add(mask).map(|v| v & !mask)
}

/// Rounds `value` down to `align` (a power of two).
pub fn align_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

/// A bump allocator over an address window. BARs are never freed while a VM
/// runs (a guest moving a BAR picks its own address), so bumping is enough.
#[derive(Debug, Clone)]
struct BumpAllocator {
    next: u64,
    end: u64,
}

impl BumpAllocator {
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let base = align_up(self.next, align)?;
        let end = base.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(base)
    }
}

/// The 32-bit MMIO window the guest is told about (ACPI `_CRS`) and that
/// BAR0/BAR1 are allocated from.
pub fn mmio32_window() -> Range<u64> {
    MMIO32_START..MMIO32_END
}

/// Hands out addresses in the 32-bit MMIO window.
#[derive(Debug, Clone)]
pub struct Mmio32Allocator(BumpAllocator);

impl Default for Mmio32Allocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Mmio32Allocator {
    /// An allocator over `MMIO32_START..MMIO32_END`.
    pub fn new() -> Self {
        let window = mmio32_window();
        Mmio32Allocator(BumpAllocator {
            next: window.start,
            end: window.end,
        })
    }

    /// `size` bytes aligned to `align` (a power of two), or `None` when the
    /// window is full or the arguments are invalid.
    pub fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        self.0.alloc(size, align)
    }
}

/// Hands out naturally aligned, power-of-two sized ranges in the 64-bit MMIO window.
#[derive(Debug, Clone)]
pub struct Mmio64Allocator(BumpAllocator);

impl Mmio64Allocator {
    /// An allocator over `window` (see [`mmio64_window`]).
    pub fn new(window: Range<u64>) -> Self {
        Mmio64Allocator(BumpAllocator {
            next: window.start,
            end: window.end,
        })
    }

    /// `size` bytes (a power of two) aligned to `size`, or `None` when it does
    /// not fit below the physical-address limit or `size` is not a power of two.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        self.0.alloc(size, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_below_the_mmio_hole() {
        assert_eq!(ram_regions(512 * MIB), vec![(GuestAddress(0), 512 << 20)]);
    }

    #[test]
    fn memory_beyond_3g_continues_at_4g() {
        let r = ram_regions(5 * GIB);
        assert_eq!(
            r,
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(4 * GIB), (2 * GIB) as usize)
            ]
        );
    }

    #[test]
    fn exactly_3g_has_no_high_region() {
        assert_eq!(ram_regions(3 * GIB).len(), 1);
    }

    #[test]
    fn fixed_low_memory_areas_do_not_overlap() {
        let mut areas = [
            (GDT_START, 6 * 8),
            (IDT_START, 8),
            (PVH_INFO_START, 56),
            (PVH_MODLIST_START, 32),
            (PVH_MEMMAP_START, PVH_MEMMAP_MAX_ENTRIES as u64 * 24),
            (ZERO_PAGE_START, 4096),
            (BOOT_STACK_POINTER - 0x1000 + 0x10, 0x1000 - 0x10),
            (PML4_START, 4096),
            (PDPT_START, 4096),
            (PD_START, PD_COUNT * 4096),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, MPTABLE_LIMIT - MPTABLE_START),
            (ACPI_RSDP_START, ACPI_TABLES_START - ACPI_RSDP_START),
            (ACPI_TABLES_START, ACPI_TABLES_LIMIT - ACPI_TABLES_START),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:#x?} overlaps {:#x?}",
                w[0],
                w[1]
            );
        }
        let last = areas[areas.len() - 1];
        assert!(last.0 + last.1 <= HIGH_RAM_START);
    }

    #[test]
    fn acpi_tables_sit_in_the_reserved_bios_area() {
        let map = e820_map(256 * MIB);
        let holder = map
            .iter()
            .find(|e| e.addr <= ACPI_RSDP_START && ACPI_TABLES_LIMIT <= e.addr + e.size)
            .unwrap();
        assert_eq!(holder.kind, E820Kind::Reserved);
        // Linux scans 0xe0000..0x100000 in 16-byte steps for the RSDP; the
        // RSDP (36 bytes) ends before the tables.
        const { assert!(0xe_0000 <= ACPI_RSDP_START && ACPI_RSDP_START < 0x10_0000) };
        const { assert!(ACPI_TABLES_START >= ACPI_RSDP_START + 36) };
    }

    #[test]
    fn e820_for_small_memory() {
        let map = e820_map(256 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIGH_RAM_START - EBDA_START,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: HIGH_RAM_START,
                    size: 255 * MIB,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn e820_for_large_memory_lists_ram_above_4g_and_not_the_mmio_hole() {
        let map = e820_map(6 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, 3 * GIB);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: 3 * GIB,
                kind: E820Kind::Ram
            }
        );
        let ram: u64 = map
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, 6 * GIB - (HIGH_RAM_START - EBDA_START));
    }

    #[test]
    fn mmio64_window_starts_at_4g_for_small_memory() {
        assert_eq!(mmio64_window(GIB, 40), 4 * GIB..(1 << 40));
    }

    #[test]
    fn mmio64_window_starts_after_high_ram_rounded_to_1g() {
        // 3 GiB low + 1.5 GiB high ends at 5.5 GiB; the window starts at 6 GiB.
        let w = mmio64_window(4 * GIB + 512 * MIB, 39);
        assert_eq!(w.start, 6 * GIB);
        assert_eq!(w.end, 1 << 39);
    }

    #[test]
    fn mmio64_window_uses_safe_default_for_nonsense_phys_bits() {
        assert_eq!(mmio64_window(GIB, 0).end, 1 << DEFAULT_PHYS_BITS);
        assert_eq!(mmio64_window(GIB, 64).end, 1 << DEFAULT_PHYS_BITS);
    }

    #[test]
    fn mmio64_window_is_empty_when_ram_reaches_the_limit() {
        let w = mmio64_window(70 * GIB, 36);
        assert!(w.is_empty());
        assert!(Mmio64Allocator::new(w).alloc(4096).is_none());
    }

    #[test]
    fn mmio64_allocations_are_naturally_aligned_and_disjoint() {
        let mut a = Mmio64Allocator::new(mmio64_window(GIB, 40));
        let x = a.alloc(4 * MIB).unwrap();
        let y = a.alloc(GIB).unwrap();
        let z = a.alloc(2 * MIB).unwrap();
        assert_eq!(x, 4 * GIB);
        assert_eq!(y % GIB, 0);
        assert!(y >= x + 4 * MIB);
        assert_eq!(z % (2 * MIB), 0);
        assert!(z >= y + GIB);
    }

    #[test]
    fn mmio64_refuses_non_power_of_two_and_overflowing_sizes() {
        let mut a = Mmio64Allocator::new(mmio64_window(GIB, 36));
        assert_eq!(a.alloc(3 * MIB), None);
        assert_eq!(a.alloc(0), None);
        assert_eq!(a.alloc(64 * GIB), None);
        // 60 GiB remain (4..64 GiB): a 32 GiB BAR fits, aligned at 32 GiB.
        assert_eq!(a.alloc(32 * GIB), Some(32 * GIB));
        assert_eq!(a.alloc(32 * GIB), None);
    }

    #[test]
    fn mmio32_allocations_respect_alignment_and_window() {
        let mut a = Mmio32Allocator::new();
        assert_eq!(a.alloc(256, 256), Some(MMIO32_START));
        assert_eq!(a.alloc(4096, 4096), Some(MMIO32_START + 4096));
        assert_eq!(a.alloc(256, 3), None);
        assert_eq!(a.alloc(0, 4096), None);
        assert_eq!(a.alloc(MMIO32_END - MMIO32_START, 4096), None);
        let last = a.alloc(4096, 4096).unwrap();
        assert!(last + 4096 <= MMIO32_END);
    }

    #[test]
    fn align_helpers() {
        assert_eq!(align_up(1, 4096), Some(4096));
        assert_eq!(align_up(4096, 4096), Some(4096));
        assert_eq!(align_up(u64::MAX, 2), None);
        assert_eq!(align_down(8191, 4096), 4096);
    }
}
