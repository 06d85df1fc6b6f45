// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! ACPI on real KVM with the test guest: the guest finds the RSDP the
//! standard ways (boot params, PVH start info, BIOS-area scan), checks every
//! table, counts the MADT's CPUs, powers off and resets through the FADT's
//! registers, and moves BARs into the DSDT's PCI windows.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// `lo-hi` (both hex) out of a `key=0xLO-0xHI` word.
fn range(line: &str, key: &str) -> (u64, u64) {
    let v = field_of(line, key).unwrap_or_else(|| panic!("no {key}= in {line}"));
    let (lo, hi) = v.split_once('-').unwrap();
    (hex(lo), hex(hi))
}

fn boot_image(image: &str, cmdline: &str, extra: &[&str]) -> Outcome {
    let kernel = testguest_file(image);
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--cmdline", cmdline];
    args.extend_from_slice(extra);
    run_ivvmm(&args, Duration::from_secs(60))
}

#[test]
fn rsdp_is_found_through_boot_params_pvh_start_info_and_the_bios_scan() {
    if !require_kvm() {
        return;
    }
    for (image, cmdline, via) in [
        ("testguest.bzImage", "test=acpi", "bootparams"),
        ("testguest.vmlinux", "test=acpi", "bootparams"),
        ("testguest.pvh.elf", "test=acpi", "pvh"),
        ("testguest.bzImage", "test=acpi rsdp=scan", "scan"),
        ("testguest.pvh.elf", "test=acpi rsdp=scan", "scan"),
    ] {
        let out = boot_image(image, cmdline, &[]);
        assert!(out.passed(), "{image} {cmdline}: {out:?}");
        let line = lines_with(&out, "acpi rsdp=")[0];
        assert_eq!(field_of(line, "via").as_deref(), Some(via), "{line}");
        assert_eq!(field_of(line, "rsdp").as_deref(), Some("0xe0000"), "{line}");
        assert_eq!(field_of(line, "rev").as_deref(), Some("2"), "{line}");
        // XSDT, FADT, MADT, DSDT: each checked (the guest fails on a bad checksum).
        for sig in ["XSDT", "FACP", "APIC", "DSDT"] {
            assert_eq!(
                lines_with(&out, &format!("acpi table={sig} ")).len(),
                1,
                "{sig}: {out:?}"
            );
        }
    }
}

#[test]
fn madt_lists_one_local_apic_per_vcpu_like_the_mp_table() {
    if !require_kvm() {
        return;
    }
    for cpus in ["1", "2"] {
        let out = boot_test("acpi", &["--cpus", cpus]);
        assert!(out.passed(), "--cpus {cpus}: {out:?}");
        assert_eq!(out.field("acpi madt", "cpus").as_deref(), Some(cpus));
        assert_eq!(out.field("acpi madt", "overrides").as_deref(), Some("16"));
        assert_eq!(out.field("acpi madt", "ioapic_id").as_deref(), Some(cpus));
        let vs = lines_with(&out, "acpi vs_mptable")[0];
        assert_eq!(field_of(vs, "mp_cpus").as_deref(), Some(cpus), "{vs}");
        assert_eq!(field_of(vs, "isa_routes_same").as_deref(), Some("16"));
    }
}

#[test]
fn fadt_and_dsdt_name_the_power_registers_and_the_layout_windows() {
    if !require_kvm() {
        return;
    }
    let out = boot_test("acpi", &[]);
    assert!(out.passed(), "{out:?}");
    let fadt = lines_with(&out, "acpi fadt")[0];
    for (k, v) in [
        ("hw_reduced", "1"),
        ("reset_reg_sup", "1"),
        ("sleep_control", "io:0x600/8"),
        ("sleep_status", "io:0x601/8"),
        ("reset", "io:0x602/8"),
    ] {
        assert_eq!(field_of(fadt, k).as_deref(), Some(v), "{k}: {fadt}");
    }
    let dsdt = lines_with(&out, "acpi dsdt")[0];
    assert_eq!(field_of(dsdt, "s5_slp_typ").as_deref(), Some("5"));
    assert_eq!(range(dsdt, "mmio32"), (0xc000_0000, 0xfebf_ffff), "{dsdt}");
    let (lo, hi) = range(dsdt, "mmio64");
    assert_eq!(lo, 4 << 30, "256 MiB of RAM: the window starts at 4 GiB");
    let bits = 64 - (hi + 1).leading_zeros() - 1;
    assert!(
        (hi + 1).is_power_of_two() && (36..=52).contains(&bits),
        "{dsdt}"
    );

    // With RAM above 4 GiB the 64-bit window starts after it (1 GiB aligned):
    // 3.5 GiB is 3 GiB low + 0.5 GiB from 4 GiB, so the window starts at 5 GiB.
    let out = boot_test("acpi", &["--mem", "3584M"]);
    assert!(out.passed(), "{out:?}");
    let (lo, hi2) = range(lines_with(&out, "acpi dsdt")[0], "mmio64");
    assert_eq!((lo, hi2), (5 << 30, hi));
}

/// Boots `test`, waits for its `marker` line, then measures how long the
/// VM takes to end.
fn time_to_exit(image: &str, test: &str, marker: &str) -> (Outcome, Duration) {
    let kernel = testguest_file(image);
    let cmdline = format!("test={test}");
    let mut vm = Running::ivvmm(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        &cmdline,
        "-v",
    ]);
    vm.wait_for(marker, Duration::from_secs(60));
    let t0 = Instant::now();
    let out = vm.finish(Duration::from_secs(10));
    (out, t0.elapsed())
}

#[test]
fn guest_poweroff_through_the_fadt_sleep_register_ends_the_vm_with_0_within_1s() {
    if !require_kvm() {
        return;
    }
    for image in ["testguest.bzImage", "testguest.pvh.elf"] {
        let (out, took) = time_to_exit(image, "acpi-poweroff", "acpi-poweroff: writing");
        assert_eq!(out.code(), 0, "{image}: {out:?}");
        assert!(took < Duration::from_secs(1), "{image}: {took:?}");
        assert!(!out.stdout.contains("FAIL"), "{out:?}");
        assert!(
            out.stdout.contains("writing 0x34 to port 0x600"),
            "SLP_TYP 5 | SLP_EN: {out:?}"
        );
        assert!(
            out.stderr.contains("guest powered off (ACPI S5)"),
            "{out:?}"
        );
    }
}

#[test]
fn fadt_reset_register_ends_the_vm_with_0() {
    if !require_kvm() {
        return;
    }
    let (out, took) = time_to_exit("testguest.bzImage", "acpi-reset", "acpi-reset: writing");
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!out.stdout.contains("FAIL"), "{out:?}");
    assert!(out.stderr.contains("guest reset the machine"), "{out:?}");
}

/// The windows the DSDT gives are windows ivvmm honours: BAR2 moved to the
/// lowest and to the highest free aligned range of the 64-bit window, BAR0
/// to the same in the 32-bit window, and both work there.
#[test]
fn bars_moved_to_free_ranges_of_the_dsdt_windows_work() {
    if !require_kvm() {
        return;
    }
    for window in ["acpi-low", "acpi-high"] {
        let shm = ShmGuard::new("ivt-acpi-move");
        write_host_patterns(&shm.path(), 4 << 20);
        let out = boot_test(&format!("ivshmem-move window={window}"), &["--shm", &shm.0]);
        assert!(out.passed(), "{window}: {:?}\n{out:?}", bad_checks(&out));
        let w = lines_with(&out, "move window=")[0];
        let (m32_lo, m32_hi) = range(w, "mmio32");
        let (m64_lo, m64_hi) = range(w, "mmio64");
        let mv2 = lines_with(&out, "move bar2")[0];
        let (from2, to2) = (
            hex(&field_of(mv2, "from").unwrap()),
            hex(&field_of(mv2, "to").unwrap()),
        );
        let size2 = hex(&field_of(mv2, "size").unwrap());
        let mv0 = lines_with(&out, "move bar0")[0];
        let (from0, to0) = (
            hex(&field_of(mv0, "from").unwrap()),
            hex(&field_of(mv0, "to").unwrap()),
        );
        assert_ne!(from2, to2, "{mv2}");
        assert_ne!(from0, to0, "{mv0}");
        assert!(m64_lo <= to2 && to2 + size2 - 1 <= m64_hi, "{mv2} in {w}");
        assert!(m32_lo <= to0 && to0 + 0x100 - 1 <= m32_hi, "{mv0} in {w}");
        if window == "acpi-high" {
            // The very top of each window: nothing else lives there. (The
            // test guest identity-maps with 4-level paging, so it reaches
            // 2^48 at most: above that it stops short of the window's end.)
            assert_eq!(to2 + size2 - 1, m64_hi.min((1 << 48) - 1), "{mv2}");
            assert_eq!(to0 + 0x100 - 1, m32_hi, "{mv0}");
        } else {
            // BAR2 sits at the window's start, so the first free range follows it.
            assert_eq!(from2, m64_lo, "{mv2}");
            assert_eq!(to2, m64_lo + size2, "{mv2}");
        }
        for check in ["bar2_new_pattern", "bar2_old_unmapped", "bar0_intrmask_rw"] {
            assert!(
                out.stdout.contains(&format!("check {check} ok")),
                "{window} {check}: {out:?}"
            );
        }
    }
}
