// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The kernels users run, booted by ivvmm on nested SVM (guest/nested/,
//! QEMU TCG): Debian 12's stock `linux-image-amd64` and
//! `linux-image-cloud-amd64` (fetched by guest/stock/fetch.sh, our driver
//! built against their `linux-headers-*` out of tree, as DKMS would), our
//! own minimal guest kernel (no ACPI) and its CONFIG_ACPI build, each with
//! the default command line and with `acpi=off`.
//!
//! Per kernel, one scenario of guest/nested/init (`boot-*`): `ivvmm
//! server` and two VMs with `--cpus 2`. Each VM checks the firmware path
//! its kernel took (the ACPI tables DSDT/APIC/FACP and the MADT for a
//! kernel with ACPI; the MP table otherwise), that both CPUs are online and
//! that our driver bound its devices; the ping VM runs `ivshm check
//! --host` on a second, plain device (L1 checks the guest's words), then
//! the two play 100 doorbell round trips through the server; then each
//! ends itself: `poweroff` (ACPI S5) where the kernel has ACPI, `reboot`
//! where it has none (a kernel without ACPI cannot power off), and ivvmm
//! must exit 0.
//!
//! Needs QEMU and what `scripts/setup` builds (without them: `SKIPPED`,
//! or a failure under CI=true).

mod common;
mod linux;

use common::missing;
use linux::boot::{assert_round_trips, assert_vm_booted, Kernel, KERNELS};
use linux::checks;
use linux::nested::{self, Scenario};
use linux::val;

fn assert_boot_scenario(k: &Kernel, s: &Scenario) -> Vec<f64> {
    let (ping, pong) = (s.vm("ping"), s.vm("pong"));
    assert_vm_booted(k, &ping, 2);
    assert_vm_booted(k, &pong, 1);
    let status = s.l1("boot: ivvmm exit status ");
    assert_eq!(
        status,
        ["L1 boot: ivvmm exit status ping=0 pong=0 (want 0 0)"]
    );

    // Data both ways with L1 on the plain device.
    ping.line("check: ok host");
    let words = s.l1("sees guest word at ");
    assert_eq!(words.len(), checks::GUEST_OFFSETS.len(), "{words:?}");
    for (w, off) in words.iter().zip(checks::GUEST_OFFSETS) {
        let want = format!("{:016x}", checks::GUEST_PATTERN ^ off);
        assert!(w.contains(&format!(": {want} (want {want})")), "{w}");
    }

    let pi = assert_round_trips(&ping, &pong);
    eprintln!("{}: {pi}", k.scenario);

    let boots = s.l1("boot: IVVMM-BOOT: ");
    assert_eq!(boots.len(), 2, "{boots:?}");
    boots
        .iter()
        .map(|b| val(b, "secs").parse().expect("seconds"))
        .collect()
}

#[test]
fn stock_and_own_kernels_boot_check_ping_pong_and_power_off_on_nested_svm() {
    if let Some(why) = nested::missing_prerequisite(&[
        ("guest/nested/build-initramfs.sh", &["--print-path"]),
        ("guest/kernel/build.sh", &["--nested", "--print-path"]),
    ]) {
        missing(&why);
        return;
    }
    let names: Vec<&str> = KERNELS.iter().map(|k| k.scenario).collect();
    let out = nested::run(&names.join(","));
    let runs = nested::passed(&out, &names);
    for (k, s) in KERNELS.iter().zip(&runs) {
        let secs = assert_boot_scenario(k, s);
        eprintln!(
            "{}: ivvmm start to L2 /init: {:.1} s and {:.1} s (two VMs booting at once)",
            k.scenario, secs[0], secs[1]
        );
    }
    common::noted(&format!(
        "nested (stock and own kernels): L1 stall retries: {}",
        nested::retries(&out)
    ));
}

/// The images tests/linux_ivvmm.rs boots on hardware KVM (the same table)
/// resolve here too, so that a wrong path fails on every machine.
#[test]
fn every_boot_scenario_finds_its_kernel_and_initramfs() {
    if let Some(why) =
        nested::missing_prerequisite(&[("guest/nested/build-initramfs.sh", &["--print-path"])])
    {
        missing(&why);
        return;
    }
    for k in &KERNELS {
        let img = k.images();
        for f in [&img.kernel, &img.initramfs] {
            assert!(f.is_file(), "{}: {} is not a file", k.scenario, f.display());
        }
        let words = k.cmdline();
        let exit = if k.acpi {
            "ivvmm.exit=poweroff"
        } else {
            "ivvmm.exit=reboot"
        };
        assert!(words.ends_with(exit), "{}: {words}", k.scenario);
        assert_eq!(
            words.contains("acpi=off"),
            k.scenario.ends_with("acpioff"),
            "{words}"
        );
    }
}
