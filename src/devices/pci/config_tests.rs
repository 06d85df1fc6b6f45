// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests for the type-0 configuration space.

use super::*;

const IDS: PciIds = PciIds {
    vendor: 0x1af4,
    device: 0x1110,
    revision: 1,
    class: 0x05_00_00,
    subsys_vendor: 0x1af4,
    subsys_id: 0x1100,
    header_type: 0,
};

const BAR0_ADDR: u64 = 0xc000_0000;
const BAR2_ADDR: u64 = 0x1_0000_0000;
const BAR2_SIZE: u64 = 4 << 20;

/// An ivshmem-shaped function: two 32-bit BARs, one 64-bit prefetchable BAR.
fn ivshmem_like() -> PciConfig {
    let mut c = PciConfig::new(IDS);
    c.add_bar(
        0,
        256,
        BarKind::Mem32 {
            prefetchable: false,
        },
        BAR0_ADDR,
    )
    .unwrap();
    c.add_bar(
        1,
        4096,
        BarKind::Mem32 {
            prefetchable: false,
        },
        0xc000_1000,
    )
    .unwrap();
    c.add_bar(
        2,
        BAR2_SIZE,
        BarKind::Mem64 { prefetchable: true },
        BAR2_ADDR,
    )
    .unwrap();
    c
}

#[test]
fn identity_registers_read_back_and_ignore_writes() {
    let mut c = ivshmem_like();
    let check = |c: &PciConfig| {
        assert_eq!(c.read(0x00, 4), 0x1110_1af4);
        assert_eq!(c.read(0x02, 2), 0x1110);
        assert_eq!(c.read(0x08, 4), 0x0500_0001, "class 05/00/00, revision 1");
        assert_eq!(c.read(0x0b, 1), 0x05);
        assert_eq!(c.read(0x0e, 1), 0);
        assert_eq!(c.read(0x2c, 4), 0x1100_1af4);
    };
    check(&c);
    for offset in [0x00, 0x08, 0x0c, 0x2c] {
        assert!(c.write(offset, 4, 0xdead_beef).is_empty());
    }
    c.write(0x0e, 1, 0x80);
    c.write(0x0b, 1, 0xff);
    check(&c);
}

#[test]
fn command_register_keeps_only_writable_bits() {
    let mut c = ivshmem_like();
    c.write(0x04, 2, 0xffff);
    assert_eq!(c.command(), COMMAND_WRITABLE);
    assert_eq!(c.command(), 0x0547);
    c.write(0x04, 2, 0);
    assert_eq!(c.command(), 0);
}

#[test]
fn memory_decode_is_reported_only_when_it_flips() {
    let mut c = ivshmem_like();
    assert!(!c.memory_enabled());
    assert_eq!(
        c.write(0x04, 2, 0x0006),
        vec![ConfigChange::MemoryDecode(true)]
    );
    assert!(c.memory_enabled());
    assert!(
        c.write(0x04, 2, 0x0002).is_empty(),
        "bus master off, memory still on"
    );
    assert_eq!(
        c.write(0x04, 1, 0x00),
        vec![ConfigChange::MemoryDecode(false)]
    );
}

#[test]
fn status_rw1c_bits_clear_on_one_and_others_are_read_only() {
    let mut c = ivshmem_like();
    // A device-side error the guest must acknowledge (set behind its back).
    c.bytes[STATUS + 1] = 0xf9;
    c.write(0x06, 2, 0x0000);
    assert_eq!(c.read(0x06, 2), 0xf900, "writing 0 keeps RW1C bits");
    c.write(0x06, 2, 0x2000);
    assert_eq!(c.read(0x06, 2), 0xd900, "writing 1 clears exactly that bit");
    c.write(0x06, 2, 0xffff);
    assert_eq!(c.read(0x06, 2), 0, "nothing else in status is writable");
    c.write(0x06, 2, 0xffff);
    assert_eq!(c.read(0x06, 2), 0, "RW1C bits cannot be set by the guest");
}

#[test]
fn dword_write_over_command_and_status_applies_each_fields_rules() {
    let mut c = ivshmem_like();
    c.bytes[STATUS + 1] = 0x80;
    let changes = c.write(0x04, 4, 0xffff_ffff);
    assert_eq!(changes, vec![ConfigChange::MemoryDecode(true)]);
    assert_eq!(c.read(0x04, 4), 0x0000_0547);
}

#[test]
fn bar0_sizing_probe_returns_size_mask_and_restores() {
    let mut c = ivshmem_like();
    assert_eq!(c.read(0x10, 4), 0xc000_0000);
    let changes = c.write(0x10, 4, 0xffff_ffff);
    assert_eq!(
        changes,
        vec![ConfigChange::BarMoved {
            index: 0,
            old: BAR0_ADDR,
            new: 0xffff_ff00
        }]
    );
    assert_eq!(
        c.read(0x10, 4),
        0xffff_ff00,
        "~(256-1), 32-bit, not prefetchable"
    );
    c.write(0x10, 4, 0xc000_0000);
    assert_eq!(c.bar(0).unwrap().addr, BAR0_ADDR);
}

#[test]
fn bar_flags_are_read_only_and_addresses_keep_size_alignment() {
    let mut c = ivshmem_like();
    c.write(0x10, 4, 0xd000_0abf);
    assert_eq!(
        c.read(0x10, 4),
        0xd000_0a00,
        "low 8 bits of a 256-byte BAR stay 0"
    );
    assert_eq!(c.bar(0).unwrap().addr, 0xd000_0a00);
    c.write(0x18, 4, 0);
    assert_eq!(c.read(0x18, 4), 0xc, "64-bit prefetchable flags survive");
}

#[test]
fn bar2_64bit_sizing_probe_reads_low_and_upper_masks() {
    let mut c = ivshmem_like();
    assert_eq!(c.read(0x18, 4), 0x0000_000c);
    assert_eq!(c.read(0x1c, 4), 0x1);
    c.write(0x18, 4, 0xffff_ffff);
    c.write(0x1c, 4, 0xffff_ffff);
    assert_eq!(
        c.read(0x18, 4),
        0xffc0_000c,
        "~(4M-1) | 64-bit | prefetchable"
    );
    assert_eq!(
        c.read(0x1c, 4),
        0xffff_ffff,
        "upper dword reads the upper mask"
    );
}

#[test]
fn bar_larger_than_4g_has_a_read_only_low_address() {
    let mut c = PciConfig::new(IDS);
    c.add_bar(
        2,
        1 << 33,
        BarKind::Mem64 {
            prefetchable: false,
        },
        1 << 34,
    )
    .unwrap();
    c.write(0x18, 4, 0xffff_ffff);
    c.write(0x1c, 4, 0xffff_ffff);
    assert_eq!(c.read(0x18, 4), 0x4);
    assert_eq!(c.read(0x1c, 4), 0xffff_fffe);
}

#[test]
fn bar_moves_are_reported_after_each_dword_of_a_64bit_update() {
    let mut c = ivshmem_like();
    let moved = c.write(0x1c, 4, 0x2);
    assert_eq!(
        moved,
        vec![ConfigChange::BarMoved {
            index: 2,
            old: BAR2_ADDR,
            new: 0x2_0000_0000
        }]
    );
    let moved = c.write(0x18, 4, 0x0040_0000);
    assert_eq!(
        moved,
        vec![ConfigChange::BarMoved {
            index: 2,
            old: 0x2_0000_0000,
            new: 0x2_0040_0000
        }]
    );
    assert_eq!(
        c.bar(2),
        Some(Bar {
            addr: 0x2_0040_0000,
            size: BAR2_SIZE,
            kind: BarKind::Mem64 { prefetchable: true }
        })
    );
    assert!(
        c.write(0x18, 4, 0x0040_0000).is_empty(),
        "same address: no move"
    );
    assert_eq!(c.bar(3), None, "upper half of a 64-bit BAR is not a BAR");
}

#[test]
fn byte_writes_into_a_bar_move_it() {
    let mut c = ivshmem_like();
    let moved = c.write(0x13, 1, 0xd0);
    assert_eq!(
        moved,
        vec![ConfigChange::BarMoved {
            index: 0,
            old: BAR0_ADDR,
            new: 0xd000_0000
        }]
    );
    assert!(
        c.write(0x10, 1, 0xff).is_empty(),
        "byte 0 of a 256-byte BAR is all size/flags"
    );
}

#[test]
fn unused_bars_and_expansion_rom_read_zero_and_ignore_writes() {
    let mut c = ivshmem_like();
    for offset in [0x20, 0x24, 0x30] {
        assert!(c.write(offset, 4, 0xffff_ffff).is_empty());
        assert_eq!(c.read(offset, 4), 0, "offset {offset:#x}");
    }
    assert_eq!(c.bar(4), None);
    assert_eq!(c.bar(6), None);
    assert_eq!(c.bar(usize::MAX), None);
}

#[test]
fn interrupt_line_is_writable_and_pin_is_not() {
    let mut c = ivshmem_like();
    c.write(0x3c, 2, 0xffff);
    assert_eq!(c.read(0x3c, 1), 0xff);
    assert_eq!(c.read(0x3d, 1), 0, "no INTx pin");
    c.write(0x3c, 4, 0x0000_000b);
    assert_eq!(c.read(0x3c, 4), 0x0000_000b, "min_gnt/max_lat read-only 0");
}

#[test]
fn capabilities_chain_from_0x34_dword_aligned() {
    let mut c = ivshmem_like();
    assert_eq!(c.read(0x06, 2) & u32::from(STATUS_CAP_LIST), 0);
    assert_eq!(c.read(0x34, 1), 0);
    let first = c.add_capability(0x11, &[1, 2, 3, 4, 5], &[0; 5]).unwrap();
    let second = c.add_capability(0x09, &[7, 8], &[0xff, 0]).unwrap();
    assert_eq!(
        (first, second),
        (0x40, 0x48),
        "7 bytes at 0x40, next at 0x48"
    );
    assert_eq!(c.read(0x06, 2) & u32::from(STATUS_CAP_LIST), 0x10);
    assert_eq!(c.read(0x34, 1), 0x40);
    assert_eq!(c.read(0x40, 4), 0x0201_4811, "id 0x11, next 0x48, body");
    assert_eq!(c.read(0x48, 4), 0x0807_0009, "id 0x09, end of list");
    // Headers and the pointer are read-only.
    c.write(0x34, 1, 0x80);
    c.write(0x40, 2, 0xffff);
    assert_eq!(c.read(0x34, 1), 0x40);
    assert_eq!(c.read(0x40, 2), 0x4811);
}

#[test]
fn capability_writes_go_through_the_mask_and_are_reported() {
    let mut c = ivshmem_like();
    let off = c
        .add_capability(0x11, &[0x00, 0x00], &[0x00, 0xc0])
        .unwrap();
    let changes = c.write(0x42, 2, 0xffff);
    assert_eq!(
        changes,
        vec![ConfigChange::Capability {
            cap_offset: off,
            offset: 0x42,
            size: 2
        }]
    );
    assert_eq!(c.read(0x42, 2), 0xc000);
    // A dword at 0x40 overlaps the whole 4-byte capability.
    let changes = c.write(0x40, 4, 0);
    assert_eq!(
        changes,
        vec![ConfigChange::Capability {
            cap_offset: off,
            offset: 0x40,
            size: 4
        }]
    );
    assert_eq!(c.read(0x40, 4), 0x0000_0011);
    assert!(c.write(0x44, 4, 0).is_empty(), "past the capability");
}

#[test]
fn a_write_straddling_two_capabilities_reports_both_parts() {
    let mut c = PciConfig::new(IDS);
    let a = c
        .add_capability(0x05, &[0, 0, 0, 0, 0], &[0xff; 5])
        .unwrap();
    let b = c.add_capability(0x09, &[0, 0], &[0xff; 2]).unwrap();
    assert_eq!((a, b), (0x40, 0x48));
    let changes = c.write(0x44, 4, 0xffff_ffff);
    assert_eq!(
        changes,
        vec![ConfigChange::Capability {
            cap_offset: 0x40,
            offset: 0x44,
            size: 3
        }]
    );
    assert_eq!(c.read(0x44, 4), 0x00ff_ffff, "0x47 is padding, read-only");
}

#[test]
fn bad_bars_and_capabilities_are_refused() {
    let mut c = ivshmem_like();
    let mem32 = BarKind::Mem32 {
        prefetchable: false,
    };
    let mem64 = BarKind::Mem64 {
        prefetchable: false,
    };
    assert_eq!(
        c.add_bar(6, 16, mem32, 0),
        Err(ConfigError::BarIndex { index: 6 })
    );
    assert_eq!(
        c.add_bar(5, 16, mem64, 0),
        Err(ConfigError::BarIndex { index: 5 })
    );
    assert_eq!(
        c.add_bar(usize::MAX, 16, mem64, 0),
        Err(ConfigError::BarIndex { index: usize::MAX })
    );
    assert_eq!(
        c.add_bar(3, 16, mem32, 0),
        Err(ConfigError::BarInUse { index: 3 })
    );
    assert_eq!(
        c.add_bar(1, 16, mem64, 0),
        Err(ConfigError::BarInUse { index: 1 })
    );
    assert_eq!(
        c.add_bar(4, 8, mem32, 0),
        Err(ConfigError::BarSize { index: 4, size: 8 })
    );
    assert_eq!(
        c.add_bar(4, 48, mem32, 0),
        Err(ConfigError::BarSize { index: 4, size: 48 })
    );
    assert!(matches!(
        c.add_bar(4, 1 << 32, mem32, 0),
        Err(ConfigError::BarSize { .. })
    ));
    assert!(matches!(
        c.add_bar(4, 256, mem32, 0x80),
        Err(ConfigError::BarAddress { .. })
    ));
    assert!(matches!(
        c.add_bar(4, 256, mem32, 0x1_0000_0000),
        Err(ConfigError::BarAddress { .. })
    ));
    assert_eq!(
        c.add_bar(4, 16, mem64, !0xf),
        Ok(()),
        "the very top of 64-bit space"
    );
    assert!(matches!(
        c.add_capability(0x11, &[0; 3], &[0; 2]),
        Err(ConfigError::CapabilityMask { .. })
    ));
    c.add_capability(0x11, &[0; 174], &[0; 174]).unwrap();
    assert!(matches!(
        c.add_capability(0x09, &[0; 20], &[0; 20]),
        Err(ConfigError::CapabilitySpace { .. })
    ));
    assert_eq!(
        c.add_capability(0x09, &[0; 14], &[0; 14]),
        Ok(0xf0),
        "exactly fits"
    );
}

#[test]
fn odd_accesses_read_all_ones_or_zero_and_writes_are_dropped() {
    let mut c = ivshmem_like();
    assert_eq!(c.read(0x00, 3), u32::MAX, "width 3");
    assert_eq!(c.read(0x03, 2), u32::MAX, "crosses a dword");
    assert_eq!(c.read(0x02, 4), u32::MAX, "misaligned dword");
    assert_eq!(
        c.read(0x100, 4),
        0,
        "extended space of a conventional function"
    );
    assert_eq!(c.read(0xffc, 4), 0);
    assert_eq!(c.read(0x1000, 4), u32::MAX, "beyond 4 KiB");
    assert!(c.write(0x03, 2, 0xffff).is_empty());
    assert!(c.write(0x12, 4, 0xffff_ffff).is_empty());
    assert!(c.write(0x100, 4, 0xffff_ffff).is_empty());
    assert_eq!(c.read(0x10, 4), 0xc000_0000);
}

#[test]
fn hammering_every_offset_and_width_never_panics_or_touches_ids() {
    let mut c = ivshmem_like();
    c.add_capability(0x11, &[0; 10], &[0xff, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0])
        .unwrap();
    let values = [
        0,
        u32::MAX,
        0x5a5a_5a5a,
        0xa5a5_a5a5,
        0x1234_5678,
        0x8000_0001,
    ];
    for offset in 0..300u16 {
        for size in 0..=8u8 {
            for value in values {
                c.write(offset, size, value);
                let _ = c.read(offset, size);
            }
        }
    }
    for offset in [u16::MAX, u16::MAX - 1, 4095, 4096] {
        for size in [1, 2, 4, u8::MAX] {
            c.write(offset, size, u32::MAX);
            let _ = c.read(offset, size);
        }
    }
    assert_eq!(c.read(0x00, 4), 0x1110_1af4);
    assert_eq!(c.read(0x08, 4), 0x0500_0001);
    assert_eq!(c.read(0x34, 1), 0x40);
    assert_eq!(c.read(0x40, 2), 0x0011);
    assert_eq!(c.read(0x18, 4) & 0xf, 0xc);
}
