// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests for bus 0 and configuration mechanism #1, driven through the PIO bus
//! exactly as vCPU exits reach it.

use super::*;
use crate::bus::Bus;
use crate::devices::pci::config::{BarKind, PciConfig};

const ENABLE: u32 = 0x8000_0000;

/// A function backed by a real config space that records the accesses it saw.
struct Recorder {
    config: PciConfig,
    writes: Vec<(u16, u8, u32)>,
}

impl PciFunction for Recorder {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config.read(offset, size)
    }
    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        self.writes.push((offset, size, value));
        self.config.write(offset, size, value);
    }
}

fn recorder() -> Arc<Mutex<Recorder>> {
    let mut config = PciConfig::new(PciIds {
        vendor: 0x1af4,
        device: 0x1110,
        revision: 1,
        class: 0x05_00_00,
        subsys_vendor: 0x1af4,
        subsys_id: 0x1100,
        header_type: 0,
    });
    config
        .add_bar(
            0,
            256,
            BarKind::Mem32 {
                prefetchable: false,
            },
            0xc000_0000,
        )
        .unwrap();
    Arc::new(Mutex::new(Recorder {
        config,
        writes: Vec::new(),
    }))
}

/// The PIO bus with the root registered where the guest finds it, plus the
/// recorder at 00:01.0.
fn setup() -> (Bus, Arc<Mutex<Recorder>>) {
    let mut root = PciRoot::new();
    let dev = recorder();
    assert_eq!(root.add_function(dev.clone()), Ok(1));
    let bus = Bus::new("pio");
    bus.insert(
        CONFIG_ADDRESS_PORT,
        CONFIG_PORTS_LEN,
        Arc::new(Mutex::new(root)),
    )
    .unwrap();
    (bus, dev)
}

fn outl(bus: &Bus, port: u64, v: u32) {
    assert!(bus.write(port, &v.to_le_bytes()));
}

fn inx(bus: &Bus, port: u64, len: usize) -> u32 {
    let mut d = [0u8; 4];
    assert!(bus.read(port, &mut d[..len]));
    u32::from_le_bytes(d)
}

fn select(bus: &Bus, device: u32, reg: u32) {
    outl(bus, 0xcf8, ENABLE | device << 11 | reg);
}

#[test]
fn host_bridge_ids_at_00_00_0() {
    let (bus, _) = setup();
    select(&bus, 0, 0);
    assert_eq!(inx(&bus, 0xcfc, 4), 0x0008_1b36);
    select(&bus, 0, 0x08);
    assert_eq!(
        inx(&bus, 0xcfc, 4),
        0x0600_0000,
        "class 06/00/00, revision 0"
    );
    assert_eq!(
        inx(&bus, 0xcfe, 2),
        0x0600,
        "Linux's sanity check reads this word"
    );
    select(&bus, 0, 0x0c);
    assert_eq!(inx(&bus, 0xcfe, 1), 0, "header type 0");
    for bar in (0x10..0x28).step_by(4) {
        select(&bus, 0, bar);
        outl(&bus, 0xcfc, 0xffff_ffff);
        assert_eq!(inx(&bus, 0xcfc, 4), 0, "the host bridge has no BARs");
    }
}

#[test]
fn read_only_fields_survive_writes_through_the_ports() {
    let (bus, _) = setup();
    for device in [0, 1] {
        select(&bus, device, 0);
        let ids = inx(&bus, 0xcfc, 4);
        outl(&bus, 0xcfc, 0);
        assert!(bus.write(0xcfe, &[0, 0]));
        assert_eq!(inx(&bus, 0xcfc, 4), ids);
        select(&bus, device, 0x08);
        let class = inx(&bus, 0xcfc, 4);
        outl(&bus, 0xcfc, 0xffff_ffff);
        assert_eq!(inx(&bus, 0xcfc, 4), class);
    }
}

#[test]
fn config_address_latches_on_dword_writes_only() {
    let (bus, _) = setup();
    outl(&bus, 0xcf8, 0x8000_0000);
    assert_eq!(inx(&bus, 0xcf8, 4), 0x8000_0000);
    // Linux's type-1 probe: a byte at 0xcfb must not change the latch.
    assert!(bus.write(0xcfb, &[0x01]));
    assert!(bus.write(0xcf8, &[0x12, 0x34]));
    assert!(bus.write(0xcfa, &[0x12, 0x34]));
    assert_eq!(inx(&bus, 0xcf8, 4), 0x8000_0000);
    assert_eq!(inx(&bus, 0xcfb, 1), 0x80, "byte reads see the latch");
    assert_eq!(inx(&bus, 0xcfa, 2), 0x8000);
    outl(&bus, 0xcf8, 0x8000_0810);
    assert_eq!(inx(&bus, 0xcf8, 4), 0x8000_0810);
}

#[test]
fn config_data_at_every_width_and_offset_reaches_the_right_register() {
    let (bus, dev) = setup();
    select(&bus, 1, 0x00);
    let ids = 0x1110_1af4u32.to_le_bytes();
    for (i, byte) in ids.iter().enumerate() {
        assert_eq!(inx(&bus, 0xcfc + i as u64, 1), u32::from(*byte), "byte {i}");
    }
    assert_eq!(inx(&bus, 0xcfc, 2), 0x1af4);
    assert_eq!(inx(&bus, 0xcfd, 2), 0x10_1a, "word at an odd offset");
    assert_eq!(inx(&bus, 0xcfe, 2), 0x1110);
    // Low two bits of CONFIG_ADDRESS are not part of the register number.
    outl(&bus, 0xcf8, ENABLE | 1 << 11 | 0x13);
    assert_eq!(inx(&bus, 0xcfc, 4), 0xc000_0000);
    assert!(bus.write(0xcff, &[0xd0]));
    assert!(bus.write(0xcfd, &[0xab, 0xcd]));
    assert_eq!(inx(&bus, 0xcfc, 4), 0xd0cd_ab00);
    let writes = &dev.lock().unwrap().writes;
    assert_eq!(writes, &vec![(0x13, 1, 0xd0), (0x11, 2, 0xcdab)]);
}

#[test]
fn cross_boundary_data_accesses_are_ignored() {
    let (bus, dev) = setup();
    select(&bus, 1, 0x10);
    let mut d = [0u8; 4];
    assert!(
        !bus.read(0xcfe, &mut d),
        "runs past 0xcff: the bus refuses it"
    );
    let mut root = PciRoot::new();
    root.add_function(dev.clone()).unwrap();
    root.write(0, &(ENABLE | 1 << 11 | 0x10).to_le_bytes());
    // Straight to the device, widths and offsets the bus would never send.
    let mut d = [0u8; 3];
    root.read(4, &mut d);
    assert_eq!(d, [0xff; 3]);
    let mut d = [0u8; 8];
    root.read(0, &mut d);
    assert_eq!(d, [0xff; 8]);
    root.write(5, &[0; 4]);
    root.write(4, &[]);
    root.write(2, &[0; 4]);
    assert!(dev.lock().unwrap().writes.is_empty());
}

#[test]
fn enable_bit_clear_reads_all_ones_and_drops_writes() {
    let (bus, dev) = setup();
    outl(&bus, 0xcf8, 1 << 11 | 0x04);
    assert_eq!(inx(&bus, 0xcfc, 4), 0xffff_ffff);
    outl(&bus, 0xcfc, 0x2);
    assert!(dev.lock().unwrap().writes.is_empty());
    assert!(!dev.lock().unwrap().config.memory_enabled());
}

#[test]
fn absent_devices_functions_and_buses_read_all_ones() {
    let (bus, dev) = setup();
    let absent = [
        ENABLE | 2 << 11,           // empty slot
        ENABLE | 31 << 11,          // last slot, empty
        ENABLE | 1 << 11 | 1 << 8,  // function 1 of a present device
        ENABLE | 1 << 16 | 1 << 11, // bus 1
        ENABLE | 0xff << 16,        // bus 255, device 0
    ];
    for address in absent {
        outl(&bus, 0xcf8, address);
        assert_eq!(inx(&bus, 0xcfc, 4), 0xffff_ffff, "{address:#x}");
        assert_eq!(inx(&bus, 0xcfd, 1), 0xff);
        assert_eq!(inx(&bus, 0xcfe, 2), 0xffff);
        outl(&bus, 0xcfc, 0);
    }
    assert!(dev.lock().unwrap().writes.is_empty());
}

#[test]
fn command_writes_reach_the_function() {
    let (bus, dev) = setup();
    select(&bus, 1, 0x04);
    assert!(bus.write(0xcfc, &[0x06, 0x00]));
    assert!(dev.lock().unwrap().config.memory_enabled());
    assert_eq!(inx(&bus, 0xcfc, 2), 0x0006);
}

#[test]
fn slots_fill_up_to_31_devices() {
    let mut root = PciRoot::new();
    for expected in 1..32u8 {
        assert_eq!(root.add_function(recorder()), Ok(expected));
    }
    assert_eq!(root.add_function(recorder()), Err(RootError::Full));
    assert!(root.function(0).is_some());
    assert!(root.function(31).is_some());
    assert!(root.function(32).is_none());
    assert!(root.function(255).is_none());
}

#[test]
fn hammering_every_register_port_and_width_never_panics() {
    let (bus, _) = setup();
    let values = [0u32, u32::MAX, 0x5a5a_5a5a, 0xa5a5_a5a5, 0x1234_5678];
    for device in [0u32, 1, 2] {
        for reg in 0..256u32 {
            for port in 0xcfc..0xd00u64 {
                for len in [1usize, 2, 4] {
                    for value in values {
                        outl(&bus, 0xcf8, ENABLE | device << 11 | reg);
                        let mut d = [0u8; 4];
                        bus.read(port, &mut d[..len]);
                        bus.write(port, &value.to_le_bytes()[..len]);
                    }
                }
            }
        }
    }
    // Host bridge and device identity are intact.
    select(&bus, 0, 0);
    assert_eq!(inx(&bus, 0xcfc, 4), 0x0008_1b36);
    select(&bus, 1, 0);
    assert_eq!(inx(&bus, 0xcfc, 4), 0x1110_1af4);
}
