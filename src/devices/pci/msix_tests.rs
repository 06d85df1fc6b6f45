// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests for the MSI-X capability, table, PBA and their rules.

use super::*;
use crate::devices::pci::config::{ConfigChange, PciConfig, PciIds};

fn dword(m: &MsixState, offset: u64) -> u32 {
    let mut d = [0u8; 4];
    m.read_table(offset, &mut d);
    u32::from_le_bytes(d)
}

fn pba_qword(m: &MsixState, offset: u64) -> u64 {
    let mut d = [0u8; 8];
    m.read_pba(offset, &mut d);
    u64::from_le_bytes(d)
}

/// Programs vector `v` with an address and data and unmasks it.
fn program(m: &mut MsixState, v: u16) -> Vec<MsixEvent> {
    let base = u64::from(v) * TABLE_ENTRY_SIZE;
    let mut events = m.write_table(base, &0xfee0_0000u32.to_le_bytes());
    events.extend(m.write_table(base + 8, &(0x40 + u32::from(v)).to_le_bytes()));
    events.extend(m.write_table(base + 12, &0u32.to_le_bytes()));
    events
}

fn enabled(vectors: u16) -> MsixState {
    let mut m = MsixState::new(vectors);
    m.write_control(MSG_CTRL_ENABLE);
    m
}

#[test]
fn capability_has_table_size_minus_one_and_only_two_writable_bits() {
    let (body, wmask) = msix_capability(64, 1, 0, 1, 0x800).unwrap();
    assert_eq!(body, [63, 0, 1, 0, 0, 0, 0x01, 0x08, 0, 0]);
    assert_eq!(wmask, [0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0]);

    let ids = PciIds {
        vendor: 0x1af4,
        device: 0x1110,
        revision: 1,
        class: 0x05_00_00,
        subsys_vendor: 0,
        subsys_id: 0,
        header_type: 0,
    };
    let mut config = PciConfig::new(ids);
    let cap = config.add_capability(MSIX_CAP_ID, &body, &wmask).unwrap();
    let ctrl = u16::from(cap) + MSIX_MSG_CTRL;
    let changes = config.write(ctrl, 2, 0xffff);
    assert_eq!(
        changes,
        vec![ConfigChange::Capability {
            cap_offset: cap,
            offset: ctrl,
            size: 2
        }]
    );
    assert_eq!(
        config.read(ctrl, 2),
        0xc03f,
        "enable, function mask, size 63"
    );
    config.write(u16::from(cap) + 4, 4, 0xffff_ffff);
    assert_eq!(
        config.read(u16::from(cap) + 4, 4),
        1,
        "table offset/BIR read-only"
    );

    let mut m = MsixState::new(64);
    let events = m.write_control(config.read(ctrl, 2) as u16);
    assert_eq!(events, vec![MsixEvent::Enabled, MsixEvent::FunctionMasked]);
}

#[test]
fn capability_parameters_are_checked() {
    assert_eq!(
        msix_capability(0, 0, 0, 0, 0),
        Err(MsixError::Vectors { vectors: 0 })
    );
    assert_eq!(
        msix_capability(2049, 0, 0, 0, 0),
        Err(MsixError::Vectors { vectors: 2049 })
    );
    assert!(msix_capability(2048, 5, 0, 5, 0x8000).is_ok());
    assert!(matches!(
        msix_capability(1, 6, 0, 0, 0),
        Err(MsixError::Bir { .. })
    ));
    assert!(matches!(
        msix_capability(1, 0, 0, 0, 0x804),
        Err(MsixError::Offset { .. })
    ));
}

#[test]
fn entries_come_out_of_reset_zero_and_masked() {
    let m = MsixState::new(4);
    for v in 0..4u64 {
        let base = v * 16;
        assert_eq!(
            [
                dword(&m, base),
                dword(&m, base + 4),
                dword(&m, base + 8),
                dword(&m, base + 12)
            ],
            [0, 0, 0, 1]
        );
    }
    assert_eq!(m.vectors(), 4);
    assert!(!m.enabled() && !m.function_masked());
}

#[test]
fn address_and_data_writes_report_entry_updated_only_on_change() {
    let mut m = MsixState::new(4);
    assert_eq!(
        m.write_table(0x20, &0xfee0_1000u32.to_le_bytes()),
        vec![MsixEvent::EntryUpdated { vector: 2 }]
    );
    assert!(m
        .write_table(0x20, &0xfee0_1000u32.to_le_bytes())
        .is_empty());
    assert_eq!(
        m.write_table(0x24, &1u32.to_le_bytes()),
        vec![MsixEvent::EntryUpdated { vector: 2 }]
    );
    assert_eq!(
        m.write_table(0x28, &0x4021u32.to_le_bytes()),
        vec![MsixEvent::EntryUpdated { vector: 2 }]
    );
    assert_eq!(
        m.message(2),
        Some(MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x4021
        })
    );
    assert_eq!(m.message(4), None);
    assert_eq!(m.entry(2).map(|e| e.ctrl), Some(1), "still masked");
}

#[test]
fn vector_control_keeps_only_the_mask_bit_and_reports_flips() {
    let mut m = MsixState::new(2);
    assert_eq!(
        m.write_table(0x1c, &0xffff_fffeu32.to_le_bytes()),
        vec![MsixEvent::Unmasked { vector: 1 }]
    );
    assert_eq!(dword(&m, 0x1c), 0, "reserved bits read 0");
    assert!(
        m.write_table(0x1c, &0u32.to_le_bytes()).is_empty(),
        "no flip"
    );
    assert_eq!(
        m.write_table(0x1c, &0xffff_ffffu32.to_le_bytes()),
        vec![MsixEvent::Masked { vector: 1 }]
    );
    assert_eq!(dword(&m, 0x1c), 1);
    assert!(m.write_table(0x1c, &1u32.to_le_bytes()).is_empty());
}

#[test]
fn qword_accesses_cover_two_fields_of_one_entry() {
    let mut m = MsixState::new(2);
    let events = m.write_table(0x10, &0x0000_0001_fee0_2000u64.to_le_bytes());
    assert_eq!(
        events,
        vec![MsixEvent::EntryUpdated { vector: 1 }],
        "one event"
    );
    let events = m.write_table(0x18, &0x0000_0000_0000_4055u64.to_le_bytes());
    assert_eq!(
        events,
        vec![
            MsixEvent::EntryUpdated { vector: 1 },
            MsixEvent::Unmasked { vector: 1 }
        ],
        "route first, then unmask"
    );
    let mut q = [0u8; 8];
    m.read_table(0x10, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_2000);
    m.read_table(0x18, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0x4055);
}

#[test]
fn odd_widths_misalignment_and_out_of_range_read_zero_and_write_nothing() {
    let mut m = MsixState::new(2);
    program(&mut m, 0);
    let before = m.entry(0);
    for (offset, len) in [
        (0u64, 1usize),
        (0, 2),
        (1, 4),
        (4, 8),
        (0, 16),
        (0, 0),
        (2, 2),
    ] {
        let mut d = vec![0xaa; len];
        m.read_table(offset, &mut d);
        assert!(d.iter().all(|&b| b == 0), "read at {offset} len {len}");
        assert!(m.write_table(offset, &vec![0x55; len]).is_empty());
    }
    assert_eq!(m.entry(0), before);
    assert_eq!(dword(&m, 0x20), 0, "past the table");
    assert!(m.write_table(0x20, &[0xff; 4]).is_empty());
    assert!(m.write_table(u64::MAX - 7, &[0xff; 8]).is_empty());
    assert_eq!(dword(&m, u64::MAX - 3), 0);
}

#[test]
fn pba_has_one_bit_per_vector() {
    let mut m = MsixState::new(70);
    for v in [0, 33, 64, 69] {
        m.set_pending(v);
    }
    m.set_pending(70); // no such vector: ignored
    assert_eq!(pba_qword(&m, 0), 1 | 1 << 33);
    assert_eq!(pba_qword(&m, 8), 1 | 1 << 5);
    let mut d = [0u8; 4];
    m.read_pba(4, &mut d);
    assert_eq!(
        u32::from_le_bytes(d),
        1 << 1,
        "vector 33 is bit 1 of dword 1"
    );
    assert_eq!(pba_qword(&m, 16), 0, "past the PBA");
    assert!(m.pending(33) && !m.pending(32) && !m.pending(70));
    assert!(m.take_pending(33));
    assert!(!m.take_pending(33), "taking clears");
    assert!(!m.take_pending(1000));
    assert_eq!(pba_qword(&m, 0), 1);
    let mut odd = [0xaa; 2];
    m.read_pba(0, &mut odd);
    assert_eq!(odd, [0, 0]);
}

#[test]
fn control_events_are_reported_only_on_change() {
    let mut m = MsixState::new(1);
    assert!(m.write_control(0).is_empty());
    assert_eq!(
        m.write_control(MSG_CTRL_ENABLE | 0x3f),
        vec![MsixEvent::Enabled]
    );
    assert!(m.write_control(MSG_CTRL_ENABLE).is_empty());
    assert_eq!(
        m.write_control(MSG_CTRL_FUNCTION_MASK),
        vec![MsixEvent::Disabled, MsixEvent::FunctionMasked]
    );
    assert_eq!(
        m.write_control(MSG_CTRL_ENABLE),
        vec![MsixEvent::Enabled, MsixEvent::FunctionUnmasked]
    );
}

#[test]
fn deliverable_needs_enable_no_function_mask_and_no_entry_mask() {
    let mut m = MsixState::new(2);
    program(&mut m, 0);
    assert!(!m.deliverable(0), "MSI-X disabled");
    m.write_control(MSG_CTRL_ENABLE);
    assert!(m.deliverable(0));
    assert!(!m.deliverable(1), "entry 1 still masked");
    assert!(!m.deliverable(2), "no such vector");
    m.write_control(MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK);
    assert!(!m.deliverable(0), "function masked");
    m.write_control(MSG_CTRL_FUNCTION_MASK);
    assert!(!m.deliverable(0));
    m.write_control(MSG_CTRL_ENABLE);
    m.write_table(12, &1u32.to_le_bytes());
    assert!(!m.deliverable(0), "entry masked");
}

#[test]
fn unmasking_a_pending_vector_injects_it_once() {
    let mut m = enabled(4);
    m.set_pending(2);
    let events = program(&mut m, 2);
    assert!(events.contains(&MsixEvent::Unmasked { vector: 2 }));
    assert_eq!(m.take_newly_deliverable(&events), vec![2]);
    assert!(!m.pending(2), "bit cleared");
    assert!(m.take_newly_deliverable(&events).is_empty(), "only once");
}

#[test]
fn entry_unmask_under_function_mask_keeps_the_bit_until_function_unmask() {
    let mut m = MsixState::new(4);
    m.write_control(MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK);
    m.set_pending(1);
    m.set_pending(3);
    let events = program(&mut m, 1);
    assert!(m.take_newly_deliverable(&events).is_empty());
    assert!(m.pending(1));
    let events = m.write_control(MSG_CTRL_ENABLE);
    assert_eq!(events, vec![MsixEvent::FunctionUnmasked]);
    assert_eq!(
        m.take_newly_deliverable(&events),
        vec![1],
        "3 is still masked"
    );
    assert!(m.pending(3));
}

#[test]
fn enabling_with_pending_vectors_injects_them() {
    let mut m = MsixState::new(3);
    program(&mut m, 0);
    program(&mut m, 2);
    m.set_pending(0);
    m.set_pending(2);
    let events = m.write_control(MSG_CTRL_ENABLE);
    assert_eq!(m.take_newly_deliverable(&events), vec![0, 2]);
    // Masked, unmasked, route updates alone never inject anything new.
    let events = m.write_table(0, &0xfee0_1000u32.to_le_bytes());
    assert!(m.take_newly_deliverable(&events).is_empty());
}

#[test]
fn hammering_random_table_and_pba_offsets_never_panics() {
    let mut m = enabled(5);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..20_000 {
        let r = next();
        let offset = match r % 4 {
            0 => r >> 8,
            1 => (r >> 8) % 0x100,
            2 => ((r >> 8) % 0x100) & !3,
            _ => u64::MAX - (r >> 8) % 16,
        };
        let len = [0usize, 1, 2, 3, 4, 8, 16][(r >> 2) as usize % 7];
        let mut buf = vec![0u8; len];
        m.read_table(offset, &mut buf);
        m.read_pba(offset, &mut buf);
        buf.fill(next() as u8);
        let events = m.write_table(offset, &buf);
        m.take_newly_deliverable(&events);
        m.set_pending((r >> 40) as u16);
        m.take_pending((r >> 24) as u16);
        let _ = m.message((r >> 48) as u16);
    }
    let mut none = MsixState::new(0);
    let mut d = [0u8; 4];
    none.read_table(0, &mut d);
    none.read_pba(0, &mut d);
    assert!(none.write_table(0, &d).is_empty());
    none.set_pending(0);
    assert!(!none.pending(0) && !none.deliverable(0));
}
