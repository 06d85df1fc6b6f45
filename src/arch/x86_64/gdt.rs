// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The boot GDT: descriptor encoding and the KVM segment registers that match it.
//!
//! `regs` writes [`boot_gdt`] to guest memory and loads the segment registers
//! from the same descriptors via [`segment_from_gdt`], so memory and
//! registers cannot disagree.

use kvm_bindings::kvm_segment;

/// Selectors of the boot GDT. Linux's 64-bit boot protocol asks for
/// `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18.
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
pub const BOOT_TSS: u16 = 0x20;
/// GDT slots: null, null, code, data, and a 16-byte TSS descriptor.
pub const GDT_ENTRIES: usize = 6;

// Descriptor access/flag words in the layout of Linux's GDT_ENTRY macro:
// bits 0..7 access byte (type, S, DPL, P), bits 12..15 flags (AVL, L, D/B, G).
const CODE64_FLAGS: u16 = 0xa09b; // G, L, present, code read/execute accessed
const CODE32_FLAGS: u16 = 0xc09b; // G, D, present, code read/execute accessed
const DATA_FLAGS: u16 = 0xc093; // G, B, present, data read/write accessed
const TSS_FLAGS: u16 = 0x008b; // present, busy 32/64-bit TSS
const TSS_LIMIT: u32 = 0x67; // the minimum TSS size minus one

/// Encodes a segment descriptor (Linux's GDT_ENTRY layout).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment register that loading `selector` for `descriptor` would give.
pub fn segment_from_gdt(descriptor: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((descriptor >> n) & 1) as u8;
    let base = ((descriptor >> 16) & 0x00ff_ffff) | ((descriptor >> 32) & 0xff00_0000);
    let raw_limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0x000f_0000)) as u32;
    let g = bit(55);
    kvm_segment {
        base,
        // KVM wants the limit in bytes: scale page-granular limits.
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((descriptor >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: 0,
        padding: 0,
    }
}

/// The boot GDT: 64-bit code for the Linux protocol, 32-bit code for PVH.
pub fn boot_gdt(long_mode: bool) -> [u64; GDT_ENTRIES] {
    let code = if long_mode {
        CODE64_FLAGS
    } else {
        CODE32_FLAGS
    };
    [
        0,
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
        0, // upper half of the 64-bit TSS descriptor: base bits 32..63 = 0
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_well_known_encodings() {
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, 0x67), 0x0000_8b00_0000_0067);
        assert_eq!(
            gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde),
            0x12ca_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_from_descriptors() {
        let cs = segment_from_gdt(0x00af_9b00_0000_ffff, BOOT_CS);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!((cs.type_, cs.present, cs.dpl, cs.s), (0xb, 1, 0, 1));
        assert_eq!((cs.l, cs.db, cs.g), (1, 0, 1));
        let ds = segment_from_gdt(gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde), BOOT_DS);
        assert_eq!(ds.base, 0x1234_5678);
        assert_eq!(ds.limit, 0xabcd_efff);
        assert_eq!((ds.type_, ds.l, ds.db), (3, 0, 1));
        let tr = segment_from_gdt(gdt_entry(TSS_FLAGS, 0, 0x67), BOOT_TSS);
        assert_eq!(
            (tr.limit, tr.type_, tr.s, tr.g, tr.present),
            (0x67, 0xb, 0, 0, 1)
        );
    }

    #[test]
    fn pvh_gdt_has_32_bit_code() {
        assert_eq!(boot_gdt(false)[2], 0x00cf_9b00_0000_ffff);
    }
}
