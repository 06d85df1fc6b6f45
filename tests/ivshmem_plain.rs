// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ivshmem-plain as the guest sees it, on real KVM with the test guest:
//! ids, BARs, registers, data both ways at every access width, BAR moves,
//! memory decode, several devices, and two VMs sharing one object.

mod common;

use common::*;

fn ids_line(out: &Outcome) -> Vec<String> {
    lines_with(out, "ivshmem 00:")
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[test]
fn ids_class_revision_and_no_capabilities_in_plain_mode() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-ids");
    let out = boot_test("ivshmem-ids", &["--shm", &shm.0, "--size", "4M"]);
    assert!(out.passed(), "{out:?}");
    let lines = ids_line(&out);
    assert_eq!(lines.len(), 1, "{out:?}");
    let l = &lines[0];
    for (key, want) in [
        ("vendor", "1af4"),
        ("device", "1110"),
        ("rev", "01"),
        ("class", "050000"),
        ("subsys_vendor", "1af4"),
        ("subsys", "1100"),
        ("pin", "00"),
        ("caps", "none"),
        ("bar1", "none"),
    ] {
        assert_eq!(field_of(l, key).as_deref(), Some(want), "{key} in {l}");
    }
    let status = u16::from_str_radix(&field_of(l, "status").unwrap(), 16).unwrap();
    assert_eq!(status & 0x10, 0, "no capability list in plain mode: {l}");
    let bar0 = field_of(l, "bar0").unwrap();
    assert!(bar0.starts_with("mem32,size=0x100,"), "{l}");
    let bar2 = field_of(l, "bar2").unwrap();
    assert!(bar2.starts_with("mem64,pref,size=0x400000,"), "{l}");
}

/// BAR2's size and flags for a range of sizes, each naturally aligned.
#[test]
fn bar2_sizes_and_alignment() {
    if !require_kvm() {
        return;
    }
    for (size, hex) in [
        ("4K", 0x1000u64),
        ("1M", 0x10_0000),
        ("64M", 0x400_0000),
        ("1G", 0x4000_0000),
    ] {
        let shm = ShmGuard::new("ivt-size");
        let out = boot_test("ivshmem-ids", &["--shm", &shm.0, "--size", size]);
        assert!(out.passed(), "{size}: {out:?}");
        let l = &ids_line(&out)[0];
        let bar2 = field_of(l, "bar2").unwrap();
        assert!(
            bar2.starts_with(&format!("mem64,pref,size={hex:#x},")),
            "{size}: {l}"
        );
        let addr = u64::from_str_radix(bar2.rsplit("addr=0x").next().unwrap(), 16).unwrap();
        assert_eq!(
            addr % hex,
            0,
            "{size}: BAR2 {addr:#x} not naturally aligned"
        );
        assert!(addr >= 1 << 32, "{size}: BAR2 {addr:#x} below 4 GiB");
    }
}

#[test]
fn registers_behave_per_spec() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-regs");
    let out = boot_test("ivshmem-regs narrow=ignore pos=0", &["--shm", &shm.0]);
    assert!(out.passed(), "{:?}\n{out:?}", bad_checks(&out));
    assert!(bad_checks(&out).is_empty(), "{out:?}");
    assert!(lines_with(&out, "check ").len() >= 10, "{out:?}");
}

#[test]
fn data_crosses_both_ways_at_every_width() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-data");
    let size = 1 << 20;
    write_host_patterns(&shm.path(), size);
    let out = boot_test("ivshmem-data", &["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    assert!(out.stdout.contains("check host_to_guest ok"), "{out:?}");
    check_guest_patterns(&shm.path(), size);
    // The host's own patterns are still there (the guest wrote elsewhere).
    assert_eq!(read_u64_at(&shm.path(), 4096), host_pattern(4096));
}

#[test]
fn guest_can_move_bar2_and_bar0() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-move");
    write_host_patterns(&shm.path(), 4 << 20);
    let out = boot_test("ivshmem-move", &["--shm", &shm.0]);
    assert!(out.passed(), "{:?}\n{out:?}", bad_checks(&out));
    let mv = lines_with(&out, "move bar2")[0];
    assert_ne!(field_of(mv, "from"), field_of(mv, "to"), "{mv}");
    assert!(out.stdout.contains("check bar2_new_pattern ok"), "{out:?}");
    assert!(out.stdout.contains("check bar2_old_unmapped ok"), "{out:?}");
    assert!(out.stdout.contains("check bar0_intrmask_rw ok"), "{out:?}");
}

#[test]
fn memory_decode_off_unmaps_and_on_maps_again() {
    if !require_kvm() {
        return;
    }
    let shm = ShmGuard::new("ivt-decode");
    write_host_patterns(&shm.path(), 4 << 20);
    let out = boot_test("ivshmem-decode", &["--shm", &shm.0]);
    assert!(out.passed(), "{:?}\n{out:?}", bad_checks(&out));
    for name in [
        "decode_off_bar0",
        "decode_off_bar2",
        "decode_on_bar2_write_dropped",
    ] {
        assert!(
            out.stdout.contains(&format!("check {name} ok")),
            "{name}: {out:?}"
        );
    }
    // The write the guest made while decode was off never reached memory.
    assert_eq!(read_u64_at(&shm.path(), 0), host_pattern(0));
}

#[test]
fn two_devices_with_different_backings() {
    if !require_kvm() {
        return;
    }
    let a = ShmGuard::new("ivt-two-a");
    let b = std::env::temp_dir().join(unique("ivt-two-b"));
    write_host_patterns(&a.path(), 4 << 20);
    write_host_patterns(&b, 1 << 20);
    let spec = format!("path={},size=1M", b.display());
    let out = boot_test("ivshmem-data", &["--shm", &a.0, "--ivshmem", &spec]);
    assert!(out.passed(), "{out:?}");
    assert_eq!(lines_with(&out, "data dev=").len(), 2, "{out:?}");
    check_guest_patterns(&a.path(), 4 << 20);
    check_guest_patterns(&b, 1 << 20);
    let _ = std::fs::remove_file(&b);
}

#[test]
fn two_vms_on_one_object_see_each_others_writes() {
    if !require_kvm() {
        return;
    }
    // VM 1 writes the guest patterns; VM 2 (started after) reads what VM 1
    // wrote, through its own mapping of the same object.
    let shm = ShmGuard::new("ivt-share");
    let size = 1u64 << 20;
    write_host_patterns(&shm.path(), size);
    let out = boot_test("ivshmem-data", &["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    // Make VM 1's writes the "host pattern" VM 2 expects, at VM 2's offsets.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm.path())
        .unwrap();
    for off in [0, 4096, size - 8] {
        write_u64_at(&f, off, host_pattern(off));
    }
    drop(f);
    let out = boot_test("ivshmem-data", &["--shm", &shm.0, "--size", "1M"]);
    assert!(out.passed(), "{out:?}");
    check_guest_patterns(&shm.path(), size);
}
